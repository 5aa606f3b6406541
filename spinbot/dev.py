"""`spinbot dev`: the embedded services plus every role as a child process, each restarted when it dies, all
stopped cleanly together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from core.migrate import migrate_url
from core.settings import settings
from spinbot.priority import BATCH_NICE, how_much_lower
from spinbot.services import (
    Child,
    ServiceError,
    popen,
    refuse_taken,
    start_postgres,
    start_redis,
    start_temporal,
    wait_for_port,
)
from spinbot.supervisor import Supervisor, lock_data_dir

# The dev server has one history shard, whose transfer queue (the tasks that hand workflow and activity tasks to
# matching) is read at most 20 times a second by default: one job after another, each read carries one task, so
# every dispatch waited ~50 ms once the limiter's burst was spent (bare workflows: ~80 ms → ~250 ms after 5–8 runs;
# see BENCHMARKS.md and bench/back_to_back.py). Reads stay triggered by new tasks, so a higher cap costs nothing idle.
DEV_TEMPORAL_CONFIG: dict[str, object] = {"history.transferProcessorMaxPollRPS": 1000}


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
    batch_nice: int = BATCH_NICE  # how much lower the roles that run jobs are scheduled (spinbot.priority)

    def lower_by(self, role: str) -> int:
        return how_much_lower(role, self.batch_nice)

    @property
    def metrics_ports(self) -> dict[str, int]:
        base = self.metrics_port
        return {"worker metrics": base, "Temporal SDK metrics": base + 1, "relay metrics": base + 2}


def _say(message: str) -> None:
    print(f"[spinbot dev] {message}", flush=True)


def _spawn(name: str, args: list[str], env: dict, lower_by: int) -> Child:
    return Child(name, popen([sys.executable, "-m", "spinbot", *args], lower_by, env=env))


def _llm_answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"{endpoint.rstrip('/')}/api/tags", timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def _roles(options: DevOptions) -> list[tuple[str, list[str]]]:
    """(name, spinbot arguments) of each role, the API last."""
    metrics = options.metrics_ports
    roles = [
        (
            "worker",
            [
                "worker",
                "--metrics-port",
                str(metrics["worker metrics"]),
                "--sdk-metrics-port",
                str(metrics["Temporal SDK metrics"]),
            ],
        ),
        ("relay", ["relay", "--metrics-port", str(metrics["relay metrics"])]),
    ]
    if options.dataplane:
        simulate = "--simulate" if options.simulate else "--no-simulate"
        roles.append(("dataplane", ["dataplane", simulate, "--sim-seconds", str(options.sim_seconds)]))
    return [*roles, ("api", ["api"])]


def _start_stack(options: DevOptions, supervisor: Supervisor) -> dict[str, Child]:
    """Every service and role, each supervised; raises ServiceError/OSError/RuntimeError when the stack cannot start."""
    data = options.data_dir
    temporal = supervisor.start(
        "temporal",
        lambda: start_temporal(
            data / "temporal",
            options.temporal_port,
            options.ui_port,
            data / "temporal.log",
            dynamic_config=DEV_TEMPORAL_CONFIG,
            lower_by=options.lower_by("temporal"),
        ),
    )
    redis = supervisor.start("redis", lambda: start_redis(data / "redis", options.redis_port))
    postgres = supervisor.start("postgres", lambda: start_postgres(data / "pg"))
    asyncio.run(migrate_url(postgres.url))
    env = dict(
        os.environ,
        SPINBOT_TEMPORAL_ADDRESS=temporal.url,
        SPINBOT_REDIS_URL=redis.url,
        SPINBOT_DATABASE_URL=postgres.url,
        SPINBOT_API_PORT=str(options.api_port),
        SPINBOT_ARTIFACTS_DIR=str(data / "objects"),
    )
    children = {"temporal": temporal, "redis": redis, "postgres": postgres}
    for name, args in _roles(options):
        children[name] = supervisor.start(name, partial(_spawn, name, args, env, options.lower_by(name)))
    wait_for_port(options.api_port, children["api"].proc, "API", timeout=60)
    return children


def _print_urls(options: DevOptions, children: dict[str, Child]) -> None:
    base = f"http://127.0.0.1:{options.api_port}"
    _say(f"API           {base}")
    _say(f"OpenAPI docs  {base}/docs")
    _say(f"Temporal UI   {children['temporal'].extra['ui']}")
    _say(f"Temporal gRPC {children['temporal'].url}")
    _say(f"Redis         {children['redis'].url}  (attach a data-plane worker here)")
    _say(f"PostgreSQL    {children['postgres'].url}")
    _say(
        f"Metrics       {base}/metrics, " + ", ".join(f"{name} :{port}" for name, port in options.metrics_ports.items())
    )
    if options.dataplane and options.simulate:
        _say("data plane: reference worker in SIMULATOR mode (no real generation)")
    elif not options.dataplane:
        _say("data plane: none started; attach a worker to Redis (group 'workers' on process:data)")
    endpoint = settings().llm_endpoint
    if not _llm_answers(endpoint):
        _say(f"warning: no LLM answers at {endpoint}; script nodes will fail until Ollama runs there")
    if lowered := [name for name in children if options.lower_by(name)]:
        _say(f"CPU priority  {', '.join(lowered)} run {options.batch_nice} below the API and Redis (--batch-nice)")
    _say("ready; a child that dies is restarted; Ctrl-C stops everything")


def run_dev(options: DevOptions) -> int:
    """Run the stack until Ctrl-C/SIGTERM; 0 after a clean stop, 1 when it was refused or could not start."""
    try:
        lock = lock_data_dir(options.data_dir)
        refuse_taken(
            {
                "API": options.api_port,
                "Redis": options.redis_port,
                "Temporal": options.temporal_port,
                "Temporal UI": options.ui_port,
                **options.metrics_ports,
            }
        )
    except (ServiceError, OSError) as exc:
        _say(f"cannot start: {exc}")
        return 1
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    supervisor = Supervisor(_say)
    code = 0
    try:
        _print_urls(options, _start_stack(options, supervisor))
    except (ServiceError, OSError, RuntimeError) as exc:
        _say(f"cannot start: {exc}")
        stopping, code = True, 1
    while not stopping:
        supervisor.tick()
        time.sleep(0.2)
    supervisor.stop_all()
    lock.close()
    _say("stopped")
    return code
