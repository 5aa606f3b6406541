"""Temporal client and runtime: one Runtime per process, metrics configured before any client."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.retry import call_with_retry

RPC_TIMEOUT = timedelta(seconds=10)  # every single call to Temporal; none may hang a request or a relay


def make_runtime(metrics_port: int | None) -> Runtime | None:
    """A runtime exporting the SDK's own Prometheus metrics on `metrics_port` (None: SDK default)."""
    if not metrics_port:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}")))


async def connect(
    address: str, namespace: str = "default", runtime: Runtime | None = None, timeout: float = 60.0
) -> Client:
    """Connect, retrying with backoff while the server starts or is unreachable."""
    return await call_with_retry(
        f"connecting to Temporal at {address}",
        (RuntimeError,),
        lambda: Client.connect(address, namespace=namespace, runtime=runtime),
        timeout=timeout,
    )
