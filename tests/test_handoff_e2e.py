"""The handoff under stress: stale and repeated handbacks, garbage, silence from the data plane."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
import uuid

import pytest

from core.contracts import contracts, service_runtimes
from handoff.relay import HandbackRelay
from handoff.streams import ensure_group
from tests.e2e import (
    BRIDGE,
    graph_request,
    outcome,
    pushed_segment,
    query_state,
    submit,
    wait_for,
)
from workflows.inputs import JobInput
from workflows.names import HANDBACK, JOB_WORKFLOW, WORKFLOW_QUEUE

pytestmark = pytest.mark.timeout(90)

TWO_SEGMENTS = graph_request(
    [
        {"id": "script", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "seg"}},
        {"id": "py1", "service": "dummy.dummy_task", "plane": "python"},
        {"id": "mid", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "mid-marker"}},
        {"id": "py2", "service": "dummy.dummy_task", "plane": "python"},
    ],
    [("script", "py1"), ("py1", "mid"), ("mid", "py2")],
)


def _hand_back(graph: dict, node_id: str, marker: str, **tag) -> dict:
    """What a data-plane worker would hand back after running `node_id`."""
    done = copy.deepcopy(graph)
    for node in done["nodes"]:
        if node["id"] == node_id:
            node.update(status="completed", output={"currentProgress": 0.5, "marker": marker})
    done["metadata"]["handoff"].update(tag)
    return done


async def _xadd_control(redis, job_id: str, graph: dict | str, stream: str = BRIDGE.control_stream) -> None:
    body = graph if isinstance(graph, str) else json.dumps(graph)
    await redis.xadd(stream, {"jobId": job_id, "created": str(int(time.time() * 1000)), "graph": body})


async def test_stale_and_repeated_handbacks_are_ignored(stack, llm):
    async with stack.no_dataplane():
        job_id = await submit(stack, TWO_SEGMENTS)
        first = await pushed_segment(stack.redis, job_id, segment=1)
        await _xadd_control(stack.redis, job_id, _hand_back(first, "py1", "stale", segment=0))
        await _xadd_control(stack.redis, job_id, _hand_back(first, "py1", "stale-run", runId="an-earlier-run"))
        await _xadd_control(stack.redis, job_id, _hand_back(first, "py1", "real"))
        second = await pushed_segment(stack.redis, job_id, segment=2)
        await _xadd_control(stack.redis, job_id, _hand_back(first, "py1", "repeat"))  # delivered twice
        await wait_for(lambda: _segment_still_open(stack, job_id), what="the repeat to be handled")
        await _xadd_control(stack.redis, job_id, _hand_back(second, "py2", "real-2"))
        assert await outcome(stack, job_id) == ("completed", None)
    detail = (await stack.api.get(f"/api/jobs/{job_id}")).json()
    nodes = {n["id"]: n for n in detail["job"]["lastGraph"]["nodes"]}
    assert nodes["py1"]["output"]["marker"] == "real"
    assert nodes["py2"]["output"]["marker"] == "real-2"
    assert sum("mid-marker" in s["prompt"] for s in llm.spans) == 1, "the node after py1 ran exactly once"


async def test_a_small_handback_is_signalled_whole(stack, llm):
    """Below TRIM_ABOVE_CHARS the relay does not read the job's graph to leave out what did not change: each signal
    carries every python-plane node (trimmed, the first would leave out py2, still pending, and the second py1)."""
    async with stack.no_dataplane():
        job_id = await submit(stack, TWO_SEGMENTS)
        first = await pushed_segment(stack.redis, job_id, segment=1)
        await _xadd_control(stack.redis, job_id, _hand_back(first, "py1", "one"))
        second = await pushed_segment(stack.redis, job_id, segment=2)
        await _xadd_control(stack.redis, job_id, _hand_back(second, "py2", "two"))
        assert await outcome(stack, job_id) == ("completed", None)
    history = await stack.temporal.get_workflow_handle(job_id).fetch_history()
    signals = [
        json.loads(event.workflow_execution_signaled_event_attributes.input.payloads[0].data)
        for event in history.events
        if event.workflow_execution_signaled_event_attributes.signal_name == HANDBACK
    ]
    assert [[node["id"] for node in signal["graph"]["nodes"]] for signal in signals] == [["py1", "py2"], ["py1", "py2"]]


async def _segment_still_open(stack, job_id):
    state = await query_state(stack, job_id)
    nodes = {n["id"]: n for n in state["graph"]["nodes"]}
    pending = await stack.redis.xpending(BRIDGE.control_stream, BRIDGE.control_group)
    return (
        nodes["py2"]["status"] == "pending" and nodes["py1"]["output"]["marker"] == "real" and pending["pending"] == 0
    )


async def test_garbage_on_control_goes_to_dead_letters_and_good_entries_flow(stack, llm):
    dead = BRIDGE.dead_letter(BRIDGE.control_stream)
    probe = uuid.uuid4().hex  # the dead-letter copy keeps every field, so ours can be told from others'
    unknown = str(uuid.uuid4())
    garbage = [
        {"nonsense": "1"},
        {"jobId": unknown, "created": "1", "graph": "{not json"},
        {"jobId": unknown, "created": "1", "graph": json.dumps({"schema": "langgraph.v1"})},
        {
            "jobId": unknown,
            "created": "1",
            "graph": json.dumps({**TWO_SEGMENTS["graph"], "workflowId": unknown, "extra": 1}),
        },
        {
            "jobId": unknown,
            "created": "1",
            "graph": json.dumps({**TWO_SEGMENTS["graph"], "workflowId": unknown, "metadata": {"handoff": {}}}),
        },
    ]
    for fields in garbage:
        await stack.redis.xadd(BRIDGE.control_stream, {**fields, "probe": probe})
    entries = await wait_for(
        lambda: _dead_letters(stack.redis, dead, "probe", probe, len(garbage)), what="dead letters"
    )
    errors = [fields["error"] for _, fields in entries]
    assert any("jobId" in e for e in errors) and any("not valid JSON" in e for e in errors)
    assert any("extra" in e for e in errors) and any("no running job" in e for e in errors)
    job_id = await submit(
        stack, {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "after garbage"}}}
    )
    assert await outcome(stack, job_id) == ("completed", None)


async def _dead_letters(redis, stream: str, field: str, marker: str, count: int):
    """This test's entries in a dead-letter stream, once all `count` of them are there."""
    # The newest entries only: other tests' floods of garbage can leave a long stream behind.
    recent = await redis.xrevrange(stream, count=2000)
    ours = [(entry_id, fields) for entry_id, fields in reversed(recent) if marker in fields.get(field, "")]
    return ours if len(ours) >= count else None


async def test_garbage_on_pubsub_is_set_aside_and_listener_keeps_going(stack, llm):
    dead = BRIDGE.dead_letter("channel")
    probe = "probe-" + uuid.uuid4().hex
    await stack.redis.publish(BRIDGE.channel("status", probe), "{not json")
    await stack.redis.publish(BRIDGE.channel("status", probe), json.dumps({"jobId": probe, "status": "exploded"}))
    await stack.redis.publish(BRIDGE.channel("progress", probe), json.dumps({"jobId": "xyz", "progress": 0.5}))
    # Bounded generously: the listener may still be working through another test's flood of messages.
    entries = await wait_for(
        lambda: _dead_letters(stack.redis, dead, "channel", probe, 3), timeout=30, what="pub/sub dead letters"
    )
    assert all(fields["error"] for _, fields in entries)
    job_id = await submit(stack, {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "p"}}})
    assert await outcome(stack, job_id) == ("completed", None)


async def test_numeric_string_progress_and_iso_created_are_accepted(stack, store, llm):
    job_id = await submit(stack, {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "p"}}})
    await outcome(stack, job_id)
    await stack.redis.publish(
        BRIDGE.channel("data", job_id), json.dumps({"jobId": job_id, "data": "note", "created": "2026-11-24T10:00:00Z"})
    )
    await stack.redis.publish(
        BRIDGE.channel("progress", job_id),
        json.dumps({"jobId": job_id, "progress": "0.25", "created": "1700000000000"}),
    )

    async def landed():
        events = await store.events(job_id)
        return (
            events if any(e["data"] == "note" for e in events) and any(e["progress"] == 0.25 for e in events) else None
        )

    await wait_for(landed, what="both events in job_events")
    assert float(await stack.redis.get(BRIDGE.progress_key(job_id))) == 1.0, "progress never moves backwards"


async def test_no_dataplane_worker_times_the_segment_out(stack, llm):
    spec = contracts()
    job_id = str(uuid.uuid4())
    graph = copy.deepcopy(TWO_SEGMENTS["graph"])
    graph.update(workflowId=job_id, context={"pipeline": "custom"}, metadata={})
    async with stack.no_dataplane():
        await stack.temporal.start_workflow(
            JOB_WORKFLOW, JobInput(graph, service_runtimes(spec), 1.0), id=job_id, task_queue=WORKFLOW_QUEUE
        )
        state, message = await outcome(stack, job_id)
    assert state == "failed"
    assert message and 'node "py1"' in message and "did not hand back segment 1 within 1s" in message


async def test_entries_left_pending_by_a_dead_relay_are_reclaimed(stack, llm):
    """A relay that read a handback and died before signalling: another relay takes it over and the job finishes."""
    bridge = dataclasses.replace(
        BRIDGE, control_stream=f"t:{uuid.uuid4().hex}:control", claim_idle_ms=200, block_ms=200
    )
    async with stack.no_dataplane():
        job_id = await submit(
            stack, {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "p"}}}
        )
        segment = await pushed_segment(stack.redis, job_id)
        for node in segment["nodes"]:
            if node["plane"] == "python":
                node.update(status="completed", output={"currentProgress": 1.0})
        await ensure_group(stack.redis, bridge.control_stream, bridge.control_group)
        await _xadd_control(stack.redis, job_id, segment, stream=bridge.control_stream)
        taken = await stack.redis.xreadgroup(bridge.control_group, "dead-relay", {bridge.control_stream: ">"}, count=1)
        assert taken, "the dead relay took the entry and will never ack it"
        survivor = asyncio.create_task(HandbackRelay(stack.redis, stack.temporal, bridge, "live-relay").run())
        try:
            assert await outcome(stack, job_id, timeout=15) == ("completed", None)
            pending = await stack.redis.xpending(bridge.control_stream, bridge.control_group)
            assert pending["pending"] == 0, "acked once the signal was delivered"
        finally:
            survivor.cancel()
            await asyncio.gather(survivor, return_exceptions=True)
