"""Cancel reaches the data plane (issue 9): the reference worker skips the rest of a job that has ended."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from contextlib import suppress

import pytest

from core.contracts import contracts
from core.redis import redis_client as make_redis_client
from handoff.dataplane import DataPlaneWorker
from handoff.simulator import Simulator
from tests.e2e import BRIDGE, outcome, submit, wait_for
from tests.test_dataplane import JobChannels, pipeline_graph, push

pytestmark = pytest.mark.timeout(60)
NODE_SECONDS = 0.8


@pytest.fixture
def bridge():
    tag = uuid.uuid4().hex
    return dataclasses.replace(
        contracts().bridge, data_stream=f"t:{tag}:data", control_stream=f"t:{tag}:control", block_ms=500
    )


@pytest.fixture
async def worker(redis_url, bridge):
    client = make_redis_client(redis_url, block_ms=bridge.block_ms)  # as `spinbot dataplane` opens its own
    task = asyncio.create_task(
        DataPlaneWorker(client, bridge, contracts().python_capabilities, Simulator(NODE_SECONDS), "cancel-test").run()
    )
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await client.aclose()


def node_running_after(finished: str | None):
    """True once node `finished` has reported its output and the data plane has reported progress beyond it
    (the next node is running); with None, once the first node has reported progress."""

    def holds(seen) -> bool:
        done_at, beyond = -1, 0.0
        if finished is not None:
            outputs = [
                (i, json.loads(p["data"])["output"])
                for i, (kind, p, _) in enumerate(seen)
                if kind == "data" and json.loads(p["data"]).get("nodeId") == finished
            ]
            if not outputs:
                return False
            done_at, beyond = outputs[0][0], float(outputs[0][1]["currentProgress"])
        return any(kind == "progress" and float(p["progress"]) > beyond for kind, p, _ in seen[done_at + 1 :])

    return holds


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def served(redis, stream: str, group: str, entry_id: str) -> bool:
    """The group has been handed the entry and acked it."""
    info = {g["name"]: g for g in await redis.xinfo_groups(stream)}.get(group)
    pending = await redis.xpending_range(stream, group, entry_id, entry_id, 1)
    if info is None:
        return False
    return _entry_order(info["last-delivered-id"]) >= _entry_order(entry_id) and not pending


def data_nodes(seen) -> list[str]:
    nodes = [json.loads(payload["data"])["nodeId"] for kind, payload, _ in seen if kind == "data"]
    return [node for node in nodes if node != "script"]  # the python nodes: the script runs on the node plane


@pytest.mark.parametrize(
    "cancelled_while, expected_nodes",
    [
        ("queued", []),  # ended before the worker read the entry: nothing runs
        ("train_voice", ["train_voice"]),  # the node running finishes, the rest is skipped
        ("generate_video", ["train_voice", "generate_video"]),
        ("postprocess_video", ["train_voice", "generate_video", "postprocess_video"]),  # no handback
    ],
)
async def test_a_job_that_ended_is_not_run_further_nor_handed_back(
    redis_client, bridge, worker, job_id, cancelled_while, expected_nodes
):
    status_key = bridge.status_key(job_id)
    await redis_client.set(status_key, "failed" if cancelled_while == "queued" else "running")
    seen: list = []
    async with JobChannels(redis_client, bridge, job_id) as channels:
        entry_id = await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
        if cancelled_while != "queued":
            before = expected_nodes[-2] if len(expected_nodes) > 1 else None
            seen = await channels.until(node_running_after(before), timeout=10)
            await redis_client.set(status_key, "failed")  # what the workflow's cancel writes
        await wait_for(
            lambda: served(redis_client, bridge.data_stream, bridge.workers_group, entry_id), what="the entry acked"
        )
        seen += await _drain(channels)
    assert data_nodes(seen) == expected_nodes
    assert await redis_client.xlen(bridge.control_stream) == 0, "nothing handed back for an ended job"
    if cancelled_while == "queued":
        assert not [payload for kind, payload, _ in seen if kind == "status"], "no 'running' for an ended job"


async def _drain(channels: JobChannels) -> list:
    """Messages the subscription receives until it has been quiet for a moment (what was published before)."""
    messages = []
    while message := await channels.pubsub.get_message(timeout=0.2):
        messages.append((channels.kinds[message["channel"]], json.loads(message["data"]), 0.0))
    return messages


SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "cancel me mid-segment"}}}


async def test_a_cancel_through_the_api_stops_the_data_plane_mid_segment(stack, llm):
    async with stack.dataplane(sim_seconds=NODE_SECONDS):
        job_id = await submit(stack, SADTALKER)
        async with JobChannels(stack.redis, BRIDGE, job_id) as channels:
            seen = await channels.until(
                node_running_after("train_voice"), timeout=20
            )  # train_voice done, generate_video running
            reply = await stack.api.post(f"/api/jobs/{job_id}/cancel")
            assert reply.status_code == 202, reply.text
            assert (await outcome(stack, job_id))[0] == "failed"
            entry_id = next(
                i for i, f in await stack.redis.xrevrange(BRIDGE.data_stream, count=500) if f.get("jobId") == job_id
            )
            await wait_for(
                lambda: served(stack.redis, BRIDGE.data_stream, BRIDGE.workers_group, entry_id),
                timeout=10,
                what="the data plane to drop the job",
            )
            seen += await _drain(channels)
    # generate_video was running at the cancel and finishes; postprocess_video never starts.
    assert data_nodes(seen) == ["train_voice", "generate_video"]
    handbacks = [
        f for _, f in await stack.redis.xrevrange(BRIDGE.control_stream, count=500) if f.get("jobId") == job_id
    ]
    assert handbacks == [], "the cancelled job was handed back"
