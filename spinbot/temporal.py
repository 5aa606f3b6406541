"""Temporal client and runtime: one Runtime per process, metrics configured before any client."""
from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

log = logging.getLogger(__name__)


def make_runtime(metrics_port: int | None) -> Runtime | None:
    """A runtime exporting the SDK's own Prometheus metrics on `metrics_port` (None: SDK default)."""
    if not metrics_port:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}")))


async def connect(address: str, namespace: str = "default", runtime: Runtime | None = None, timeout: float = 60.0) -> Client:
    """Connect, retrying with backoff while the server starts or is unreachable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    while True:
        try:
            return await Client.connect(address, namespace=namespace, runtime=runtime)
        except RuntimeError as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("Temporal at %s not ready (%s); retrying in %.1fs", address, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
