"""`spinbot dev`: the embedded services plus every role as a child process, stopped cleanly together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.migrate import migrate_url
from core.settings import settings
from spinbot.services import (
    Child,
    Postgres,
    ServiceError,
    popen,
    refuse_taken,
    start_redis,
    start_temporal,
    wait_for_port,
)


@dataclass
class DevOptions:
    data_dir: Path
    api_port: int
    redis_port: int
    temporal_port: int
    ui_port: int
    dataplane: bool
    simulate: bool
    sim_seconds: float
    metrics_port: int = 9464  # worker; +1 Temporal SDK; +2 relay

    @property
    def metrics_ports(self) -> dict[str, int]:
        base = self.metrics_port
        return {"worker metrics": base, "Temporal SDK metrics": base + 1, "relay metrics": base + 2}


def _say(message: str) -> None:
    print(f"[spinbot dev] {message}", flush=True)


def _spawn(name: str, args: list[str], env: dict) -> Child:
    return Child(name, popen([sys.executable, "-m", "spinbot", *args], env=env))


def _llm_answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"{endpoint.rstrip('/')}/api/tags", timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def run_dev(options: DevOptions) -> int:
    config = settings()
    try:
        refuse_taken(
            {
                "API": options.api_port,
                "Redis": options.redis_port,
                "Temporal": options.temporal_port,
                "Temporal UI": options.ui_port,
                **options.metrics_ports,
            }
        )
    except ServiceError as exc:
        _say(f"cannot start: {exc}")
        return 1
    data = options.data_dir
    services: list = []
    roles: list[Child] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        temporal = start_temporal(data / "temporal", options.temporal_port, options.ui_port, data / "temporal.log")
        services.append(temporal)
        redis = start_redis(data / "redis", options.redis_port)
        services.append(redis)
        postgres = Postgres(data / "pg")
        services.append(postgres)
        asyncio.run(migrate_url(postgres.url))
        env = dict(
            os.environ,
            SPINBOT_TEMPORAL_ADDRESS=temporal.url,
            SPINBOT_REDIS_URL=redis.url,
            SPINBOT_DATABASE_URL=postgres.url,
            SPINBOT_API_PORT=str(options.api_port),
            SPINBOT_ARTIFACTS_DIR=str(data / "objects"),
        )
        metrics = options.metrics_ports
        roles.append(
            _spawn(
                "worker",
                [
                    "worker",
                    "--metrics-port",
                    str(metrics["worker metrics"]),
                    "--sdk-metrics-port",
                    str(metrics["Temporal SDK metrics"]),
                ],
                env,
            )
        )
        roles.append(_spawn("relay", ["relay", "--metrics-port", str(metrics["relay metrics"])], env))
        if options.dataplane:
            roles.append(
                _spawn(
                    "dataplane",
                    [
                        "dataplane",
                        "--simulate" if options.simulate else "--no-simulate",
                        "--sim-seconds",
                        str(options.sim_seconds),
                    ],
                    env,
                )
            )
        api = _spawn("api", ["api"], env)
        roles.append(api)
        wait_for_port(options.api_port, api.proc, "API", timeout=60)
    except (ServiceError, OSError, RuntimeError) as exc:
        _say(f"cannot start: {exc}")
        stopping = True
    else:
        base = f"http://127.0.0.1:{options.api_port}"
        _say(f"API           {base}")
        _say(f"OpenAPI docs  {base}/docs")
        _say(f"Temporal UI   {temporal.extra['ui']}")
        _say(f"Temporal gRPC {temporal.url}")
        _say(f"Redis         {redis.url}  (attach a data-plane worker here)")
        _say(f"PostgreSQL    {postgres.url}")
        _say(
            f"Metrics       {base}/metrics, "
            + ", ".join(f"{name} :{port}" for name, port in options.metrics_ports.items())
        )
        if options.dataplane and options.simulate:
            _say("data plane: reference worker in SIMULATOR mode (no real generation)")
        elif not options.dataplane:
            _say("data plane: none started; attach a worker to Redis (group 'workers' on process:data)")
        if not _llm_answers(config.llm_endpoint):
            _say(f"warning: no LLM answers at {config.llm_endpoint}; script nodes will fail until Ollama runs there")
        _say("ready; Ctrl-C stops everything")
    failed = None
    while not stopping:
        failed = next((child for child in roles if child.proc.poll() is not None), None)
        if failed:
            _say(f"{failed.name} exited with code {failed.proc.returncode}; stopping everything")
            break
        time.sleep(0.2)
    for child in reversed(roles):
        child.stop()
    for service in reversed(services):
        service.stop()
    _say("stopped")
    return 1 if failed else 0
