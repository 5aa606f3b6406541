"""A deployment as processes, for tests that kill things: every role its own `python -m spinbot ...`, on services
of its own (Temporal on a SQLite file, Redis with AOF, and, when asked, PostgreSQL), each restartable in place.

Temporal is a plain dev server started with no spinbot flags (standing in for a cluster: the roles register
their search attributes themselves). Config comes from SPINBOT_CONFIG_DIR, a copy of the shipped files with
take-over times short enough for a test. A killed role is started again by `Deployment.restart` (in production a
supervisor would), on the same arguments and port, logging to a file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from activities.registry import slots_by_queue
from config import CONFIG_DIR
from core.contracts import contracts
from core.migrate import migrate_url
from core.redis import redis_client
from core.temporal import connect
from spinbot.ports import free_port
from spinbot.services import Child, Postgres, popen, start_redis, start_temporal, wait_for_port
from workflows.names import WORKFLOW_QUEUE

BRIDGE = contracts().bridge
ACTIVITY_QUEUES = sorted(slots_by_queue(contracts()))  # spinbot.activities, spinbot.activities.llm
SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker"}


@dataclass
class Role:
    name: str  # kind-N: the replica, whatever incarnation
    child: Child
    log: Path  # this incarnation's own log
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.child.proc.pid


@dataclass
class Services:
    """Temporal, Redis and (optionally) PostgreSQL of this deployment only: stopping one disturbs no other test."""

    base: Path
    temporal: Child
    temporal_port: int
    redis: Child
    redis_port: int
    postgres: Postgres | None = None  # None: the deployment uses a database it was given

    def kill_temporal(self) -> None:
        _kill(self.temporal)

    def start_temporal(self) -> None:
        """Again on the same port and SQLite file: waiting workflows are still there."""
        log = self.base / "logs" / "temporal-server.log"
        self.temporal = start_temporal(self.base / "temporal", self.temporal_port, None, log, False)

    def kill_redis(self) -> None:
        _kill(self.redis)

    def start_redis(self) -> None:
        """Again on the same port and folder: the AOF brings back every key and stream."""
        self.redis = start_redis(self.base / "redis", self.redis_port, persist=True)

    def stop_postgres(self) -> None:
        assert self.postgres is not None, "this deployment does not own its PostgreSQL"
        self.postgres.stop()  # fast shutdown: open connections are cut

    def start_postgres(self) -> None:
        self.postgres = Postgres(self.base / "pg")


def _kill(child: Child) -> None:
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(10)


@dataclass
class Deployment:
    temporal: Client
    redis: aioredis.Redis  # retries across Redis restarts
    services: Services
    env: dict[str, str]
    logs: Path
    commands: dict[str, list[str]]
    roles: dict[str, list[Role]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    retired: list[Role] = field(default_factory=list)  # killed incarnations, their logs kept

    def start(self, kind: str, index: int, port: int | None = None) -> Role:
        name = f"{kind}-{index + 1}"
        incarnation = sum(role.name == name for role in self.retired)
        log = self.logs / (f"{name}.log" if not incarnation else f"{name}~{incarnation}.log")
        args = [*self.commands[kind], *(["--port", str(port)] if port else [])]
        out = log.open("ab")
        child = Child(
            name, popen([sys.executable, "-m", "spinbot", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        )
        out.close()
        role = Role(name, child, log, port)
        replicas = self.roles.setdefault(kind, [])
        if index < len(replicas):
            replicas[index] = role
        else:
            replicas.append(role)
        return role

    def kill(self, kind: str, index: int = 0) -> Role:
        role = self.roles[kind][index]
        _kill(role.child)  # a stopped (SIGSTOP) process dies too, without running another instruction
        self.killed.append(role.name)
        self.retired.append(role)
        return role

    def restart(self, kind: str, index: int = 0) -> Role:
        """Start replica `index` of `kind` again (after `kill`), as a supervisor would: same arguments and port."""
        old = self.roles[kind][index]
        assert old.child.proc.poll() is not None, f"{old.name} is still running"
        return self.start(kind, index, old.port)

    def api_url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.roles['api'][index].port}"

    def children(self) -> list[Child]:
        return [role.child for roles in self.roles.values() for role in roles]

    def logs_of(self, kind: str) -> list[Path]:
        """Every incarnation's log of every replica of `kind`."""
        return sorted(self.logs.glob(f"{kind}-*.log"))


def config_dir(tmp_path: Path) -> Path:
    """The deployment's own config: the shipped files, with take-over times short enough for a test."""
    folder = tmp_path / "config"
    folder.mkdir()
    for name in ("capabilities.json", "pipelines.json"):
        shutil.copy(CONFIG_DIR / name, folder / name)
    bridge = json.loads((CONFIG_DIR / "redis.bridge.json").read_text())
    bridge["relay"].update(blockMs=1000, claimIdleMs=2000)
    bridge.setdefault("dataplane", {}).update(heartbeatMs=500, livenessTtlMs=3000)
    (folder / "redis.bridge.json").write_text(json.dumps(bridge))
    return folder


async def pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> set[str]:
    reply = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind)
    )
    return {poller.identity for poller in reply.pollers}


def tails(logs: Path, size: int = 2000) -> str:
    """The end of every role's log, for a failure message."""
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-size:]}" for p in sorted(logs.glob("*.log")))


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60, logs: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            found = tails(logs) if logs else ""
            raise AssertionError(f"timed out waiting for {what}{found}")
        await asyncio.sleep(0.1)
    return value


async def ready(deployment: Deployment, timeout: float = 60) -> None:
    """Every replica up: APIs answer, workers poll their queues, relays and data planes joined their groups.

    Pollers of killed incarnations linger in Temporal's list for a while; only the live ones are looked for."""
    roles, logs = deployment.roles, deployment.logs
    for api in roles.get("api", []):
        await asyncio.to_thread(wait_for_port, api.port or 0, api.child.proc, api.name, timeout)
    for role in (r for rs in roles.values() for r in rs):
        assert role.child.proc.poll() is None, f"{role.name} exited: {role.log.read_text()[-3000:]}"

    def pids(kind: str) -> set[str]:
        return {str(role.pid) for role in roles.get(kind, [])}

    async def polling(queue: str, kind: TaskQueueType.ValueType) -> set[str]:
        return {p.split("@")[0] for p in await pollers(deployment.temporal, queue, kind)}

    async def everyone() -> bool:
        seen = {
            "workflow-worker": await polling(WORKFLOW_QUEUE, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
            **{
                f"activity-worker[{q}]": await polling(q, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
                for q in ACTIVITY_QUEUES
            },
        }
        missing.clear()
        missing.update({kind: pids(kind) - found for kind, found in seen.items() if not pids(kind) <= found})
        # A consumer joins a group only once it reads an entry: count the blocking stream reads instead.
        reading = sum(c.get("cmd") == "xreadgroup" for c in await deployment.redis.client_list())
        if reading < len(roles.get("relay", [])) + len(roles.get("dataplane", [])):
            missing["relays and data planes blocked in XREADGROUP"] = {str(reading)}
        return not missing

    missing: dict[str, set[str]] = {}
    try:
        await until(everyone, "every replica to poll its queue or join its group", timeout, logs)
    except AssertionError as exc:
        raise AssertionError(f"not ready: {missing}; {exc}") from None


@contextlib.asynccontextmanager
async def production(
    tmp_path: Path,
    database_url: str | None,
    s3_endpoint: str,
    llm_url: str,
    sim_seconds: float = 0.2,
    replicas: dict[str, int] | None = None,
    segment_timeout_seconds: int = 60,
    extra_env: dict[str, str] | None = None,
):
    """Every role as its own process (two of each unless `replicas` says otherwise); yields the Deployment.

    `database_url` None: the deployment runs (and migrates) a PostgreSQL of its own, which it may stop."""
    logs = tmp_path / "logs"
    logs.mkdir()
    temporal_port, redis_port = free_port(), free_port()
    temporal = start_temporal(tmp_path / "temporal", temporal_port, None, logs / "temporal-server.log", False)
    services = Services(tmp_path, temporal, temporal_port, start_redis(tmp_path / "redis", redis_port), redis_port)
    if database_url is None:
        services.start_postgres()
        assert services.postgres is not None
        database_url = services.postgres.url
        await migrate_url(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SPINBOT_"))},
        "SPINBOT_TEMPORAL_ADDRESS": temporal.url,
        "SPINBOT_REDIS_URL": services.redis.url,
        "SPINBOT_DATABASE_URL": database_url,
        "MINIO_ENDPOINT": s3_endpoint,
        "SPINBOT_LLM_ENDPOINT": llm_url,
        "SPINBOT_LLM_TIMEOUT_MS": "5000",
        "SPINBOT_SEGMENT_TIMEOUT_SECONDS": str(segment_timeout_seconds),
        "SPINBOT_CONFIG_DIR": str(config_dir(tmp_path)),
        "SPINBOT_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    commands: dict[str, list[str]] = {
        "api": ["api"],
        "workflow-worker": ["worker", "--workflows"],
        **{f"activity-worker[{q}]": ["worker", "--activities", "--queue", q] for q in ACTIVITY_QUEUES},
        "relay": ["relay"],
        "dataplane": ["dataplane", "--simulate", "--sim-seconds", str(sim_seconds)],
    }
    redis = redis_client(services.redis.url)
    deployment: Deployment | None = None
    try:
        deployment = Deployment(await connect(temporal.url), redis, services, env, logs, commands)
        for kind in commands:
            for index in range((replicas or {}).get(kind, 2)):
                deployment.start(kind, index, free_port() if kind == "api" else None)
        yield deployment
    finally:
        await redis.aclose()
        for child in reversed(deployment.children() if deployment else []):
            if child.proc.poll() is None:
                os.kill(child.proc.pid, signal.SIGCONT)
            child.stop()
        if services.postgres:
            services.postgres.stop()
        services.redis.stop()
        services.temporal.stop()


async def finished(client: Client, job_id: str) -> bool:
    description = await client.get_workflow_handle(job_id).describe()
    return description.status is not None and description.status.name != "RUNNING"


async def stopped_holding(
    deployment: Deployment,
    kind: str = "dataplane",
    index: int = 0,
    timeout: float = 30,
    before_each: float = 0.0,
    after: float = 0.0,
) -> int:
    """Freeze replica `index` of `kind` (SIGSTOP) at a moment it holds entries of its stream; how many it holds.

    A data-plane worker holds process:data entries while it runs them; a relay holds process:control entries
    while it signals them. A relay blocked in XREADGROUP when frozen is still handed the next entry by Redis,
    so a relay is frozen for up to `before_each` seconds at a time, waiting to be handed one. `after`: once seen
    holding one, let it work that long first (a data-plane worker then is mid-segment, not just handed it)."""
    pid, deadline = deployment.roles[kind][index].pid, time.monotonic() + timeout
    while True:
        if before_each:
            os.kill(pid, signal.SIGSTOP)
            frozen_until = time.monotonic() + before_each
            while time.monotonic() < frozen_until:
                if held := await pending_of(deployment, kind, index):
                    return held
                await asyncio.sleep(0.02)
            os.kill(pid, signal.SIGCONT)
        elif await pending_of(deployment, kind, index):
            await asyncio.sleep(after)
            os.kill(pid, signal.SIGSTOP)  # a stopped process cannot ack: what it holds now, it holds at the kill
            if held := await pending_of(deployment, kind, index):
                return held
            os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"{kind} replica {index + 1} was never seen holding an entry"
        await asyncio.sleep(0.02)


async def pending_of(deployment: Deployment, kind: str, index: int) -> int:
    """Entries of its stream held (read, not acked) by replica `index` of `kind` (consumer names end in -<pid>)."""
    stream, group = {
        "dataplane": (BRIDGE.data_stream, BRIDGE.workers_group),
        "relay": (BRIDGE.control_stream, BRIDGE.control_group),
    }[kind]
    pid = str(deployment.roles[kind][index].pid)
    consumers = await deployment.redis.xinfo_consumers(stream, group)
    return sum(c["pending"] for c in consumers if c["name"].rsplit("-", 1)[-1] == pid)


async def all_complete(deployment: Deployment, job_ids: list[str], timeout: float = 90) -> None:
    async def result(job_id: str) -> str:
        try:
            await asyncio.wait_for(deployment.temporal.get_workflow_handle(job_id).result(), timeout)
            return "completed"
        except Exception as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'cause', None) or exc}"

    results = await asyncio.gather(*(result(job_id) for job_id in job_ids))
    failed = {job_id: outcome for job_id, outcome in zip(job_ids, results, strict=True) if outcome != "completed"}
    assert not failed, (failed, tails(deployment.logs))
