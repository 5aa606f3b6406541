"""A dead data-plane worker's entries are taken over; a live one's never are (issue 9, item 6)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import uuid
from contextlib import suppress
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from core.contracts import contracts
from core.redis import redis_client as make_redis_client
from handoff.dataplane import DataPlaneWorker
from handoff.simulator import Simulator
from handoff.streams import ensure_group
from spinbot.ports import free_port
from spinbot.services import start_redis
from tests.e2e import wait_for
from tests.test_dataplane import pipeline_graph, push

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent

# A worker in a process of its own, so it can die by kill -9: no clean stop, its heartbeat just runs out.
CHILD = """
import asyncio, dataclasses, json, sys
from core.contracts import contracts
from core.redis import redis_client
from handoff.dataplane import DataPlaneWorker
from handoff.simulator import Simulator

url, overrides, seconds, name = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
bridge = dataclasses.replace(contracts().bridge, **overrides)

async def main():
    redis = redis_client(url, block_ms=bridge.block_ms)
    await DataPlaneWorker(redis, bridge, contracts().python_capabilities, Simulator(seconds), name).run()

asyncio.run(main())
"""


@pytest.fixture
def overrides() -> dict:
    tag = uuid.uuid4().hex
    return {
        "data_stream": f"t:{tag}:data",
        "control_stream": f"t:{tag}:control",
        "block_ms": 300,
        "heartbeat_ms": 200,
        "liveness_ttl_ms": 1000,
    }


@pytest.fixture
def bridge(overrides):
    return dataclasses.replace(contracts().bridge, **overrides)


@pytest.fixture
async def workers(redis_url, bridge):
    """Start in-process workers by name; each is stopped (cleanly) after the test unless the test did."""
    running: list[tuple[asyncio.Task, aioredis.Redis]] = []

    async def start(name: str, seconds: float) -> asyncio.Task:
        client = make_redis_client(redis_url, block_ms=bridge.block_ms)  # as `spinbot dataplane` opens its own
        worker = DataPlaneWorker(client, bridge, contracts().python_capabilities, Simulator(seconds), name)
        task = asyncio.create_task(worker.run())
        running.append((task, client))
        return task

    yield start
    for task, client in running:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def held_by(redis, bridge, consumer: str) -> list[dict]:
    return await redis.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 100, consumer)


async def handbacks(redis, bridge) -> dict[str, list[dict]]:
    """Every handback so far, by job."""
    by_job: dict[str, list[dict]] = {}
    for _, fields in await redis.xrange(bridge.control_stream):
        by_job.setdefault(fields["jobId"], []).append(json.loads(fields["graph"]))
    return by_job


def taken_over() -> float:
    return REGISTRY.get_sample_value("spinbot_dataplane_entries_taken_over_total") or 0.0


async def push_jobs(redis, bridge, count: int) -> list[str]:
    await ensure_group(redis, bridge.data_stream, bridge.workers_group)
    jobs = [str(uuid.uuid4()) for _ in range(count)]
    for job_id in jobs:
        await push(redis, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
    return jobs


async def test_a_killed_workers_entries_finish_on_another(redis_url, redis_client, bridge, overrides, workers):
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        redis_url,
        json.dumps(overrides),
        "1.0",
        "doomed",
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: redis_client.zscore(bridge.liveness_key, "doomed"), timeout=60, what="the child's heartbeat"
        )
        jobs = await push_jobs(redis_client, bridge, 3)
        await wait_for(
            lambda: _holds(redis_client, bridge, "doomed", 3), timeout=10, what="the child to hold 3 entries"
        )
        await workers("survivor", 0.2)  # joins after the entries were handed out: it gets none of them by reading
        before = taken_over()
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 5)

        async def all_handed_back():
            done = await handbacks(redis_client, bridge)
            return done if all(job in done for job in jobs) else None

        done = await wait_for(all_handed_back, timeout=20, what="the dead worker's jobs to finish elsewhere")
    finally:
        if child.returncode is None:
            child.kill()
            await asyncio.wait_for(child.wait(), 5)
    assert all(len(done[job]) == 1 for job in jobs), "each job handed back once"
    assert all(node["status"] == "completed" for job in jobs for node in done[job][0]["nodes"])
    assert taken_over() - before == 3
    await wait_for(lambda: _all_acked(redis_client, bridge), what="every entry acked")

    async def forgotten():
        """The dead worker, holding nothing, is dropped from the liveness set and the group."""
        names = [c["name"] for c in await redis_client.xinfo_consumers(bridge.data_stream, bridge.workers_group)]
        return await redis_client.zscore(bridge.liveness_key, "doomed") is None and "doomed" not in names

    await wait_for(forgotten, timeout=5, what="the dead worker to be forgotten")


async def _all_acked(redis, bridge) -> bool:
    return (await redis.xpending(bridge.data_stream, bridge.workers_group))["pending"] == 0


async def _holds(redis, bridge, consumer: str, count: int) -> bool:
    return len(await held_by(redis, bridge, consumer)) == count


async def test_a_stopped_workers_entries_move_at_once(redis_client, bridge, workers):
    """A clean stop (cancel) leaves entries pending and marks the worker dead: another takes them over."""
    first = await workers("first", 1.0)
    jobs = await push_jobs(redis_client, bridge, 2)
    await wait_for(lambda: _holds(redis_client, bridge, "first", 2), what="the first worker to hold both entries")
    first.cancel()
    with suppress(asyncio.CancelledError):
        await first
    assert len(await held_by(redis_client, bridge, "first")) == 2, "cancelled mid-work: left pending"
    before = taken_over()
    await workers("second", 0.1)

    async def all_handed_back():
        done = await handbacks(redis_client, bridge)
        return done if all(job in done for job in jobs) else None

    done = await wait_for(all_handed_back, timeout=10, what="the stopped worker's jobs to finish elsewhere")
    assert all(len(done[job]) == 1 for job in jobs)
    assert taken_over() - before == 2


async def test_a_live_workers_long_entries_are_never_taken(redis_client, bridge, workers):
    before = taken_over()
    await workers("slow", 1.2)  # 3 nodes: about 3.6 s, several liveness TTLs (1 s)
    [job_id] = await push_jobs(redis_client, bridge, 1)
    await wait_for(lambda: _holds(redis_client, bridge, "slow", 1), what="the slow worker to take the entry")
    await workers("idle", 0.0)  # claims every 200 ms whatever a dead worker holds

    async def handed_back():
        return (await handbacks(redis_client, bridge)).get(job_id)

    deliveries = []
    while not await handed_back():
        held = await held_by(redis_client, bridge, "slow")
        deliveries += [row["times_delivered"] for row in held]
        assert not await held_by(redis_client, bridge, "idle"), "the live worker's entry was taken"
        await asyncio.sleep(0.2)
        assert len(deliveries) < 100, "no handback within 20 s"
    assert len(deliveries) >= 10 and set(deliveries) == {1}, "delivered once, to the slow worker only"
    assert len(await handbacks(redis_client, bridge)) == 1 and len((await handbacks(redis_client, bridge))[job_id]) == 1
    assert taken_over() == before


async def test_a_restarted_worker_serves_what_it_held_under_its_name(redis_client, bridge, workers):
    first = await workers("steady-name", 1.0)
    [job_id] = await push_jobs(redis_client, bridge, 1)
    await wait_for(lambda: _holds(redis_client, bridge, "steady-name", 1), what="the worker to take the entry")
    first.cancel()
    with suppress(asyncio.CancelledError):
        await first
    await workers("steady-name", 0.1)  # same consumer name, as a fixed-name deployment restarts

    async def handed_back():
        return (await handbacks(redis_client, bridge)).get(job_id)

    assert len(await wait_for(handed_back, timeout=10, what="the restarted worker to finish its entry")) == 1


async def test_a_worker_started_while_redis_is_away_waits_for_it(bridge, tmp_path):
    """Announcing itself is retried like reading: a worker started before Redis (or during a blip) serves once
    Redis answers, instead of dying at start-up."""
    port = free_port()
    # A client without redis-py's own retries, so the worker's must do the waiting.
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", decode_responses=True)
    worker = DataPlaneWorker(client, bridge, contracts().python_capabilities, Simulator(0.0), "early-bird")
    task = asyncio.create_task(worker.run())
    server = None
    try:
        await asyncio.sleep(1.5)
        assert not task.done(), "the worker gave up while Redis was away"
        server = await asyncio.to_thread(start_redis, tmp_path / "redis", port, False)
        redis = aioredis.from_url(server.url, decode_responses=True)
        try:
            [job_id] = await push_jobs(redis, bridge, 1)

            async def handed_back():
                return (await handbacks(redis, bridge)).get(job_id)

            await wait_for(handed_back, timeout=20, what="a handback once Redis is up")
        finally:
            await redis.aclose()
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        if server:
            server.stop()
