"""The production shape, as processes: every role twice on external services, one replica of each killed mid-run.

Temporal is a plain dev server started with no spinbot flags (standing in for a cluster: the roles register
their search attributes themselves), Redis, PostgreSQL and the S3 server stand apart, and every role runs as
its own `python -m spinbot ...` process: two APIs, two workflow workers, two activity workers per task queue
(LLM calls on their own queue), two relays, two data-plane workers. Config comes from SPINBOT_CONFIG_DIR.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from websockets.asyncio.client import connect as ws_connect

from activities.registry import slots_by_queue
from config import CONFIG_DIR
from core.contracts import contracts
from core.temporal import connect
from spinbot.services import Child, free_port, popen, start_redis, start_temporal, wait_for_port
from workflows.names import WORKFLOW_QUEUE

pytestmark = pytest.mark.timeout(180)

BRIDGE = contracts().bridge
ACTIVITY_QUEUES = sorted(slots_by_queue(contracts()))  # spinbot.activities, spinbot.activities.llm
JOBS = 12  # submitted before the data plane's kill; more follow until it dies holding an entry
KILL_AFTER = 6  # jobs submitted before one replica of each role is killed
SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker"}


@dataclass
class Role:
    name: str
    child: Child
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.child.proc.pid


@dataclass
class Deployment:
    temporal: Client
    redis: aioredis.Redis
    roles: dict[str, list[Role]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    def kill(self, kind: str, index: int = 0) -> Role:
        role = self.roles[kind][index]
        os.kill(role.pid, signal.SIGKILL)
        role.child.proc.wait(10)
        self.killed.append(role.name)
        return role

    def api_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.roles['api'][index].port}"


def _config_dir(tmp_path: Path) -> Path:
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


def _start_role(name: str, args: list[str], env: dict, logs: Path) -> Child:
    log = (logs / f"{name}.log").open("ab")
    return Child(name, popen([sys.executable, "-m", "spinbot", *args], env=env, stdout=log, stderr=subprocess.STDOUT))


async def _pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> set[str]:
    reply = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind)
    )
    return {poller.identity for poller in reply.pollers}


def _tails(logs: Path, size: int = 2000) -> str:
    """The end of every role's log, for a failure message."""
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-size:]}" for p in sorted(logs.glob("*.log")))


async def _until(check, what: str, timeout: float = 60, logs: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            found = _tails(logs) if logs else ""
            raise AssertionError(f"timed out waiting for {what}{found}")
        await asyncio.sleep(0.1)
    return value


async def _ready(deployment: Deployment, logs: Path) -> None:
    """Every replica up: APIs answer, workers poll their queues, relays and data planes joined their groups."""
    roles = deployment.roles
    for api in roles["api"]:
        wait_for_port(api.port or 0, api.child.proc, api.name, timeout=60)
    for role in (r for rs in roles.values() for r in rs):
        assert role.child.proc.poll() is None, f"{role.name} exited: {(logs / f'{role.name}.log').read_text()}"

    def pids(kind: str) -> set[str]:
        return {str(role.pid) for role in roles[kind]}

    async def polling(queue: str, kind: TaskQueueType.ValueType) -> set[str]:
        return {p.split("@")[0] for p in await _pollers(deployment.temporal, queue, kind)}

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
        if reading < len(roles["relay"]) + len(roles["dataplane"]):
            missing["relays and data planes blocked in XREADGROUP"] = {str(reading)}
        return not missing

    missing: dict[str, set[str]] = {}
    try:
        await _until(everyone, "every replica to poll its queue or join its group", logs=logs)
    except AssertionError as exc:
        raise AssertionError(f"not ready: {missing}; {exc}") from None


@contextlib.asynccontextmanager
async def production(tmp_path: Path, database_url: str, s3_endpoint: str, llm_url: str, sim_seconds: float = 0.2):
    logs = tmp_path / "logs"
    logs.mkdir()
    temporal = start_temporal(tmp_path / "temporal", free_port(), None, logs / "temporal-server.log", False)
    redis_server = start_redis(tmp_path / "redis", free_port())
    children: list[Child] = [temporal, redis_server]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SPINBOT_"))},
        "SPINBOT_TEMPORAL_ADDRESS": temporal.url,
        "SPINBOT_REDIS_URL": redis_server.url,
        "SPINBOT_DATABASE_URL": database_url,
        "MINIO_ENDPOINT": s3_endpoint,
        "SPINBOT_LLM_ENDPOINT": llm_url,
        "SPINBOT_LLM_TIMEOUT_MS": "5000",
        "SPINBOT_SEGMENT_TIMEOUT_SECONDS": "60",
        "SPINBOT_CONFIG_DIR": str(_config_dir(tmp_path)),
        "SPINBOT_LOG_FORMAT": "json",
    }
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        client = await connect(temporal.url)
        deployment = Deployment(client, redis)
        commands: dict[str, list[str]] = {
            "api": ["api"],
            "workflow-worker": ["worker", "--workflows"],
            **{f"activity-worker[{q}]": ["worker", "--activities", "--queue", q] for q in ACTIVITY_QUEUES},
            "relay": ["relay"],
            "dataplane": ["dataplane", "--simulate", "--sim-seconds", str(sim_seconds)],
        }
        for kind, args in commands.items():
            for i in (1, 2):
                port = free_port() if kind == "api" else None
                role_args = [*args, "--port", str(port)] if port else args
                child = _start_role(f"{kind}-{i}", role_args, env, logs)
                children.append(child)
                deployment.roles.setdefault(kind, []).append(Role(f"{kind}-{i}", child, port))
        yield deployment, logs
    finally:
        await redis.aclose()
        for child in reversed(children):
            child.stop()


class Watcher:
    """One WebSocket client of one API, subscribed to jobs as they are submitted (through any API)."""

    def __init__(self, connection):
        self.connection = connection
        self.statuses: dict[str, list[str]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            if message.get("type") == "update":
                self.statuses.setdefault(message["jobId"], []).append(message["status"])

    async def subscribe(self, job_id: str) -> None:
        await self.connection.send(json.dumps({"action": "subscribe", "jobId": job_id}))

    def saw_completed(self, job_id: str) -> bool:
        return "completed" in self.statuses.get(job_id, [])


async def _submit(api: str, prompt: str) -> str:
    async with httpx.AsyncClient(timeout=15) as http:
        reply = await http.post(f"{api}/api/jobs", json={**SADTALKER, "params": {"script": {"prompt": prompt}}})
    assert reply.status_code == 200, reply.text
    return reply.json()["jobId"]


async def test_two_of_every_role_one_of_each_killed_mid_run_every_job_completes(
    tmp_path, database_url, s3_endpoint, llm
):
    started = time.monotonic()
    async with production(tmp_path, database_url, s3_endpoint, llm.url) as (deployment, logs):
        await _ready(deployment, logs)
        ready_seconds = time.monotonic() - started
        llm.delay = 1.0  # LLM calls in flight when the kills land: one LLM worker dies holding some
        api_one, api_two = deployment.api_url(0), deployment.api_url(1)
        submitted: list[tuple[str, str]] = []  # (job id, API it went through)
        async with ws_connect(api_two.replace("http://", "ws://") + "/ws", proxy=None, open_timeout=10) as socket:
            watcher = Watcher(socket)
            for i in range(KILL_AFTER):
                api = (api_one, api_two)[i % 2]
                job_id = await _submit(api, f"production job {i}")
                submitted.append((job_id, api))
                await watcher.subscribe(job_id)
                await asyncio.sleep(0.1)

            # Mid-run: jobs in flight on every role. One replica of each role (the data plane later) dies hard.
            in_flight = [job_id for job_id, _ in submitted if not await _finished(deployment.temporal, job_id)]
            for kind in deployment.roles:
                if kind != "dataplane":
                    deployment.kill(kind)
            killed_at = time.monotonic()
            llm.delay = 0.3
            for i in range(KILL_AFTER, JOBS):
                job_id = await _submit(api_two, f"production job {i}")  # the balancer now sends all to the survivor
                submitted.append((job_id, api_two))
                await watcher.subscribe(job_id)
                await asyncio.sleep(0.1)
            await _all_complete(deployment, [job_id for job_id, _ in submitted], logs)
            recovered, first_wave = time.monotonic() - killed_at, len(submitted)

            # The data plane dies holding an entry; the live replica takes it over once the dead one's heartbeat
            # has run out (dataplane.livenessTtlMs, short in this deployment's config). Jobs keep coming meanwhile.
            stop_feeding = asyncio.Event()

            async def feed() -> None:
                for i in range(len(submitted), len(submitted) + 20):
                    if stop_feeding.is_set():
                        return
                    job_id = await _submit(api_two, f"production job {i}")
                    submitted.append((job_id, api_two))
                    await watcher.subscribe(job_id)
                    await asyncio.sleep(0.25)

            feeding = asyncio.create_task(feed())
            held = await _stopped_holding(deployment, 0)
            deployment.kill("dataplane")
            dataplane_killed_at = time.monotonic()
            stop_feeding.set()
            await feeding
            await _all_complete(deployment, [job_id for job_id, _ in submitted], logs)
            taken_over = time.monotonic() - dataplane_killed_at

            async with httpx.AsyncClient(base_url=api_two, timeout=10) as http:
                for job_id, _ in submitted:
                    status = (await http.get(f"/api/status/{job_id}")).json()
                    assert (status["status"], status["progress"]) == ("completed", 1.0), status
            through_one = [job_id for job_id, api in submitted if api == api_one]
            await _until(
                lambda: _true(all(watcher.saw_completed(job_id) for job_id, _ in submitted)),
                "the WebSocket client on API 2 to see every job complete",
                timeout=20,
            )
            watcher.reader.cancel()
        elapsed = time.monotonic() - started
        replicas = {kind: len(roles) for kind, roles in deployment.roles.items()}
        print(
            f"\nproduction shape: {len(submitted)} jobs ({len(through_one)} through API 1, the rest through API 2), "
            f"replicas {replicas}, killed -9: {', '.join(deployment.killed)} "
            f"({len(in_flight)} jobs in flight at the kill; the first {first_wave} jobs all completed "
            f"{recovered:.1f}s after it; the data-plane replica died holding {held} entry(ies), every job done "
            f"{taken_over:.1f}s after), all {len(submitted)} completed, "
            f"WebSocket on API 2 saw all {len(through_one)} jobs of API 1 complete; "
            f"ready in {ready_seconds:.1f}s, {elapsed:.1f}s in all"
        )
        assert len(deployment.killed) == len(deployment.roles)


async def _true(value: bool) -> bool:
    return value


async def _finished(client: Client, job_id: str) -> bool:
    description = await client.get_workflow_handle(job_id).describe()
    return description.status is not None and description.status.name != "RUNNING"


async def _stopped_holding(deployment: Deployment, index: int, timeout: float = 30) -> int:
    """Freeze data-plane replica `index` (SIGSTOP) at a moment it holds entries; how many it holds."""
    pid, deadline = deployment.roles["dataplane"][index].pid, time.monotonic() + timeout
    while True:
        if await _pending_of(deployment, index):
            os.kill(pid, signal.SIGSTOP)  # a stopped worker cannot ack: what it holds now, it holds at the kill
            if held := await _pending_of(deployment, index):
                return held
            os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"data-plane replica {index + 1} was never seen holding an entry"
        await asyncio.sleep(0.02)


async def _pending_of(deployment: Deployment, index: int) -> int:
    """Entries of process:data held (read, not acked) by data-plane replica `index`."""
    pid = str(deployment.roles["dataplane"][index].pid)
    consumers = await deployment.redis.xinfo_consumers(BRIDGE.data_stream, BRIDGE.workers_group)
    return sum(c["pending"] for c in consumers if c["name"].rsplit("-", 1)[-1] == pid)


async def _all_complete(deployment: Deployment, job_ids: list[str], logs: Path, timeout: float = 90) -> None:
    async def result(job_id: str) -> str:
        try:
            await asyncio.wait_for(deployment.temporal.get_workflow_handle(job_id).result(), timeout)
            return "completed"
        except Exception as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'cause', None) or exc}"

    results = await asyncio.gather(*(result(job_id) for job_id in job_ids))
    failed = {job_id: outcome for job_id, outcome in zip(job_ids, results, strict=True) if outcome != "completed"}
    assert not failed, (failed, _tails(logs))
