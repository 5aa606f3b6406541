"""Dependency outages (issue 8) on a stack of this module's own, so stopping a service disturbs no other test.

Redis killed (-9) and restarted under load, Redis, PostgreSQL and Temporal each really stopped: clients see
no 5xx but an honest 503 naming the dependency with Retry-After, status lookups fall back to PostgreSQL,
WebSocket clients keep receiving, `/ready` says what is down, and a background task that dies is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from core.contracts import contracts
from core.migrate import migrate_url
from core.redis import redis_client
from core.settings import Settings
from core.temporal import connect
from handoff.dataplane import DataPlaneWorker
from handoff.simulator import Simulator
from spinbot.ports import free_port
from spinbot.services import Child, Postgres, start_redis, start_temporal
from tests.e2e import outcome, submit, wait_for
from tests.stack import running_stack
from tests.ws_clients import ws_client

pytestmark = pytest.mark.timeout(120)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "outage"}}}
INTERNAL_ERROR = 1011


@dataclass
class Private:
    """Services only this module uses: Redis (AOF on), Temporal (SQLite) and PostgreSQL, each restartable in place."""

    base: Path
    redis: Child
    redis_port: int
    temporal: Child
    temporal_port: int
    postgres: Postgres | None

    def kill_redis(self) -> None:
        self.redis.proc.send_signal(signal.SIGKILL)
        self.redis.proc.wait(10)

    def start_redis(self) -> None:
        self.redis = start_redis(self.base / "redis", self.redis_port, persist=True)

    def stop_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.stop()
        self.postgres = None

    def start_postgres(self) -> None:
        self.postgres = Postgres(self.base / "pg")

    def kill_temporal(self) -> None:
        self.temporal.proc.send_signal(signal.SIGKILL)
        self.temporal.proc.wait(10)

    def start_temporal(self) -> None:
        self.temporal = start_temporal(
            self.base / "temporal", self.temporal_port, None, log_path=self.base / "temporal.log"
        )


@pytest.fixture(scope="module")
async def private(tmp_path_factory):
    base = tmp_path_factory.mktemp("outage")
    redis_port, temporal_port = free_port(), free_port()
    redis = start_redis(base / "redis", redis_port, persist=True)
    temporal = start_temporal(base / "temporal", temporal_port, None, log_path=base / "temporal.log")
    services = Private(base, redis, redis_port, temporal, temporal_port, Postgres(base / "pg"))
    assert services.postgres is not None
    await migrate_url(services.postgres.url)
    try:
        yield services
    finally:
        if services.postgres:
            services.postgres.stop()
        services.redis.stop()
        services.temporal.stop()


@pytest.fixture(scope="module")
async def outage_stack(private, ollama):
    assert private.postgres is not None
    settings = Settings(
        temporal_address=private.temporal.url,
        redis_url=private.redis.url,
        database_url=private.postgres.url,
        llm_endpoint=ollama.url,
        llm_timeout_ms=5000,
        segment_timeout_seconds=60,
        artifacts_dir=private.base / "objects",
    )
    client = await connect(private.temporal.url)
    async with running_stack(settings, client) as stack:
        yield stack


@contextlib.asynccontextmanager
async def redis_down(private: Private):
    private.kill_redis()
    try:
        yield
    finally:
        private.start_redis()


@contextlib.asynccontextmanager
async def postgres_down(private: Private):
    private.stop_postgres()
    try:
        yield
    finally:
        private.start_postgres()


async def ready_again(stack, timeout: float = 30) -> dict:
    async def ready():
        reply = await stack.api.get("/ready")
        return reply.json() if reply.status_code == 200 else None

    return await wait_for(ready, timeout, "/ready to answer 200 again")


def assert_unavailable(reply, dependency: str) -> None:
    assert reply.status_code == 503, (reply.status_code, reply.text)
    assert dependency in reply.json()["error"], reply.text
    assert int(reply.headers["Retry-After"]) > 0


async def test_ready_reports_every_dependency_and_background_task(outage_stack):
    reply = await outage_stack.api.get("/ready")
    assert reply.status_code == 200, reply.text
    checks = reply.json()["checks"]
    assert {"Redis", "PostgreSQL", "Temporal", "hub-listener"} <= set(checks)
    assert all(check["ok"] for check in checks.values()), checks
    assert (await outage_stack.api.get("/health")).json() == {"status": "ok"}


async def test_redis_kill_and_restart_under_load_answers_no_5xx(private, outage_stack, llm, record_property):
    stack = outage_stack
    done = await submit(stack, SADTALKER)
    assert await outcome(stack, done) == ("completed", None)
    llm.delay = 1.5  # the followed job runs through the outage
    replies: list[tuple[float, float, str, int]] = []  # (sent, answered, what, status)
    stop = asyncio.Event()

    async def lookups(api):
        while not stop.is_set():
            sent = time.monotonic()
            status = (await api.get(f"/api/status/{done}")).status_code
            replies.append((sent, time.monotonic(), "status", status))

    async def submissions(api):
        while not stop.is_set():
            sent = time.monotonic()
            status = (await api.post("/api/jobs", json=SADTALKER)).status_code
            replies.append((sent, time.monotonic(), "submit", status))

    # A client with a connection per loop: requests queue in the API, not in the test's own pool. Idle
    # connections are dropped before uvicorn's 5 s keep-alive ends, so none is reused as the server closes it.
    unlimited = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=1.0)
    async with (
        ws_client(stack.api_url) as client,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30, limits=unlimited) as api,
    ):
        followed = await submit(stack, SADTALKER)
        assert (await client.subscribe(followed))["status"] != "completed"
        # More requests in flight than a Redis pool holds connections (the API's waits for a free one).
        load = [asyncio.create_task(lookups(api)) for _ in range(150)]
        load += [asyncio.create_task(submissions(api)) for _ in range(10)]
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        private.kill_redis()
        await asyncio.sleep(2.5)
        private.start_redis()
        restarted = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*load)
        updates = await client.updates_until(followed, "completed", timeout=60)
    assert updates[-1]["progress"] == 1.0, "the WebSocket client kept receiving through the restart"
    assert await outcome(stack, followed, timeout=60) == ("completed", None)

    during = [r for r in replies if r[0] < restarted and r[1] > killed]  # in flight while Redis was down
    after = [r for r in replies if r[0] >= restarted]
    codes = [r[3] for r in replies]
    figures = {
        "in_flight_during_outage": {what: sum(r[2] == what for r in during) for what in ("status", "submit")},
        "sent_after_restart": {what: sum(r[2] == what for r in after) for what in ("status", "submit")},
        "codes": {code: codes.count(code) for code in sorted(set(codes))},
        "slowest_during_outage_s": round(max(r[1] - r[0] for r in during), 2),
    }
    print(f"\nRedis kill -9 (down {restarted - killed:.1f}s) and restart under load: {figures}")
    record_property("redis_restart", figures)
    assert during and after
    assert not [r for r in replies if r[3] >= 500], [r for r in replies if r[3] >= 500][:10]


async def test_redis_down_status_comes_from_postgres_and_ready_says_redis(private, outage_stack):
    stack = outage_stack
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    async with redis_down(private):
        reply = await stack.api.get(f"/api/status/{job_id}")
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"jobId": job_id, "status": "completed", "progress": 1.0}
        assert_unavailable(await stack.api.get("/api/status/not-a-uuid"), "Redis")
        assert (await stack.api.get(f"/api/jobs/{job_id}")).status_code == 200, "history needs only PostgreSQL"
        async with ws_client(stack.api_url) as client:
            assert (await client.subscribe(job_id, timeout=15))["status"] == "completed"
        ready = await stack.api.get("/ready")
        assert_unavailable(ready, "Redis")
        checks = ready.json()["checks"]
        assert not checks["Redis"]["ok"] and checks["PostgreSQL"]["ok"] and checks["Temporal"]["ok"]
    checks = (await ready_again(stack))["checks"]
    assert checks["hub-listener"]["ok"]


async def test_a_redis_that_stops_answering_holds_no_request(private, outage_stack):
    """Redis frozen (SIGSTOP): it keeps its connections and answers nothing, as a frozen host or a partition that
    sends no reset. A status lookup is answered from PostgreSQL within seconds. Before, the API's commands had no
    socket timeout: the lookup waited for ever (for TCP keepalive, hours)."""
    stack = outage_stack
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    private.redis.proc.send_signal(signal.SIGSTOP)
    try:
        # One reply timeout (5 s), then PostgreSQL; ten retried timeouts would outlast this wait.
        reply = await asyncio.wait_for(stack.api.get(f"/api/status/{job_id}"), 30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "completed"
    finally:
        private.redis.proc.send_signal(signal.SIGCONT)
    await ready_again(stack)


async def test_postgres_down_history_routes_answer_503_and_status_still_answers(private, outage_stack):
    stack = outage_stack
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    async with postgres_down(private):
        assert_unavailable(await stack.api.get("/api/jobs"), "PostgreSQL")
        assert_unavailable(await stack.api.get(f"/api/jobs/{job_id}"), "PostgreSQL")
        assert_unavailable(await stack.api.get(f"/api/status/{uuid.uuid4()}"), "PostgreSQL")
        status = await stack.api.get(f"/api/status/{job_id}")
        assert (status.status_code, status.json()["status"]) == (200, "completed"), "Redis still knows it"
        ready = await stack.api.get("/ready")
        assert_unavailable(ready, "PostgreSQL")
        assert not ready.json()["checks"]["PostgreSQL"]["ok"]

    async def history_back():
        return (await stack.api.get("/api/jobs")).status_code == 200

    await wait_for(history_back, 30, "history routes once PostgreSQL is back")
    await ready_again(stack)


async def test_a_websocket_that_cannot_be_served_is_closed_with_1011(private, outage_stack, caplog):
    stack = outage_stack
    caplog.set_level(logging.ERROR)
    async with ws_client(stack.api_url) as client:
        async with postgres_down(private), redis_down(private):
            assert_unavailable(await stack.api.get(f"/api/status/{uuid.uuid4()}"), "Redis and PostgreSQL")
            await client.send({"action": "subscribe", "jobId": str(uuid.uuid4())})
            assert await client.close_code(timeout=30) == INTERNAL_ERROR
    gc.collect()
    await asyncio.sleep(0.1)
    assert any("closing with 1011" in r.getMessage() for r in caplog.records), "the failure is logged"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    await ready_again(stack)
    async with ws_client(stack.api_url) as client:
        assert (await client.subscribe(str(uuid.uuid4())))["status"] == "not_found", "new sockets are served"


async def test_temporal_down_submissions_answer_503_naming_it(private, outage_stack, llm):
    stack = outage_stack
    private.kill_temporal()
    try:
        assert_unavailable(await stack.api.post("/api/jobs", json=SADTALKER), "Temporal")
        ready = await stack.api.get("/ready")
        assert_unavailable(ready, "Temporal")
        assert not ready.json()["checks"]["Temporal"]["ok"]
    finally:
        private.start_temporal()
    await ready_again(stack)

    async def accepted():
        reply = await stack.api.post("/api/jobs", json=SADTALKER)
        return reply.json()["jobId"] if reply.status_code == 200 else None

    job_id = await wait_for(accepted, 30, "a submission once Temporal is back")
    assert await outcome(stack, job_id, timeout=60) == ("completed", None)


async def test_a_background_task_that_dies_is_restarted_and_ready_shows_it(private, outage_stack, llm):
    """The hub's subscriptions refused by Redis (an ACL): it dies on each start, /ready says so, and once Redis
    allows it again the supervisor's next restart serves, catches its clients up on what they missed, and
    pushes resume."""
    stack = outage_stack
    bridge = contracts().bridge
    followed = str(uuid.uuid4())
    # A client of its own: earlier tests restarted Redis under the stack's (which does not retry).
    admin = aioredis.from_url(private.redis.url, decode_responses=True)
    await admin.set(bridge.status_key(followed), "running", ex=300)
    await admin.set(bridge.progress_key(followed), "0.2", ex=300)
    async with ws_client(stack.api_url) as watcher:
        assert (await watcher.subscribe(followed))["status"] == "running"
        try:
            await admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
            for connection in await admin.client_list(_type="pubsub"):
                await admin.client_kill_filter(_id=connection["id"])

            async def hub_down():
                reply = await stack.api.get("/ready")
                hub = reply.json()["checks"]["hub-listener"]
                return hub if reply.status_code == 503 and not hub["ok"] and hub["restarts"] >= 1 else None

            hub = await wait_for(hub_down, 20, "/ready to report the hub listener down")
            assert "NoPermission" in hub["state"] or "permission" in hub["state"].lower(), hub
            # The job finishes while nobody listens: its keys change, its message is lost.
            await admin.set(bridge.status_key(followed), "completed", ex=300)
            await admin.set(bridge.progress_key(followed), "1", ex=300)
            await admin.publish(
                bridge.channel("status", followed), json.dumps({"jobId": followed, "status": "completed"})
            )
        finally:
            await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
            await admin.aclose()
        caught_up = await watcher.recv_about(followed, timeout=20)
        assert (caught_up["status"], caught_up["progress"]) == ("completed", 1.0), caught_up
    checks = (await ready_again(stack))["checks"]
    assert checks["hub-listener"]["ok"] and checks["hub-listener"]["restarts"] >= 1
    llm.delay = 0.5
    async with ws_client(stack.api_url) as client:
        job_id = await submit(stack, SADTALKER)
        assert (await client.subscribe(job_id))["status"] != "completed"
        assert (await client.updates_until(job_id, "completed", timeout=30))[-1]["progress"] == 1.0


async def test_hundreds_of_concurrent_subscribes_wait_for_connections_instead_of_failing(outage_stack):
    job_id = await submit(outage_stack, SADTALKER)
    clients = 300  # several times the API's Redis pool: each subscribe reads the job's state once
    async with contextlib.AsyncExitStack() as exits:
        sockets = await asyncio.gather(
            *(exits.enter_async_context(ws_client(outage_stack.api_url)) for _ in range(clients))
        )
        states = await asyncio.wait_for(asyncio.gather(*(s.subscribe(job_id, timeout=30) for s in sockets)), 60)
    assert len(states) == clients and all(state["jobId"] == job_id for state in states)


async def test_a_500_node_segment_publishes_every_node_s_data(private):
    """Five hundred nodes finishing at once publish at once: the pool waits for free connections, none is lost."""
    tag = uuid.uuid4().hex
    bridge = dataclasses.replace(contracts().bridge, data_stream=f"t:{tag}:data", control_stream=f"t:{tag}:control")
    job_id = str(uuid.uuid4())
    nodes = [
        {"id": f"n{i}", "service": "dummy.dummy_task", "plane": "python", "status": "pending",
         "input": {"currentProgress": 0.0}, "progressWeight": 0.002}
        for i in range(500)
    ]  # fmt: skip
    graph: dict[str, object] = {"schema": "langgraph.v1", "workflowId": job_id, "nodes": nodes, "edges": []}
    graph["metadata"] = {"handoff": {"segment": 1}}
    redis = redis_client(private.redis.url, block_ms=500)
    listener = aioredis.from_url(private.redis.url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(bridge.channel("data", job_id))
    worker = DataPlaneWorker(redis, bridge, contracts().python_capabilities, Simulator(0.0), f"w-{tag}")
    running = asyncio.create_task(worker.run())
    try:
        await redis.xadd(bridge.data_stream, {"jobId": job_id, "created": "1", "graph": json.dumps(graph)})
        published: set[str] = set()

        async def all_published():
            while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)) is not None:
                published.add(json.loads(json.loads(message["data"])["data"])["nodeId"])
            return len(published) == len(nodes)

        await wait_for(all_published, 30, "a data message from every node")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pubsub.aclose()
        await listener.aclose()
        await redis.aclose()
