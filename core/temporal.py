"""Temporal client and runtime: one Runtime per process, metrics configured before any client."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.envconfig import ClientConfig, ClientConnectConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.payloads import DATA_CONVERTER
from core.retry import call_with_retry

RPC_TIMEOUT = timedelta(seconds=10)  # every single call to Temporal; none may hang a request or a relay


def make_runtime(metrics_port: int | None, host: str = "127.0.0.1") -> Runtime | None:
    """A runtime exporting the SDK's own Prometheus metrics on `host:metrics_port` (None: SDK default)."""
    if not metrics_port:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{metrics_port}")))


DEFAULT_ADDRESS = "127.0.0.1:7233"


class TemporalConfigError(ValueError):
    """The SDK's environment configuration (TEMPORAL_* variables, a profile file) cannot be used."""


def connect_options(address: str | None = None, namespace: str | None = None) -> ClientConnectConfig:
    """`Client.connect` keywords from the SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
    TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE and its TOML file); an explicit address or namespace wins."""
    try:
        options = ClientConfig.load_client_connect_config()
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise TemporalConfigError(f"Temporal client configuration (TEMPORAL_* / profile): {exc}") from None
    options["target_host"] = address or options.get("target_host") or DEFAULT_ADDRESS
    options["namespace"] = namespace or options.get("namespace") or "default"
    return options


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    runtime: Runtime | None = None,
    timeout: float = 60.0,
) -> Client:
    """Connect as `connect_options` says, retrying with backoff while the server starts or is unreachable."""
    options = connect_options(address, namespace)
    return await call_with_retry(
        f"connecting to Temporal at {options['target_host']}",
        (RuntimeError,),
        lambda: Client.connect(**options, runtime=runtime, data_converter=DATA_CONVERTER),
        timeout=timeout,
    )
