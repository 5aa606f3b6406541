"""Replay guards every path (issue 9): each path of the job workflow runs on the real stack, and its fresh history
replays against the current workflow code. With SPINBOT_RECORD_HISTORIES=1 each history is also written to
tests/histories/<path>.json, where test_replay.py replays it (and the older ones) on every run.

Paths: node-only, hybrid, data-plane failure handed back, data-plane failure the existing worker's way (graph in
job:<id> + status failed) and with that graph overwritten before it was read, segment timeout, cancel, retry
attempt 2, continue-as-new (first and last run), and a run parked mid-wait (an incomplete history).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer

from core.contracts import contracts, python_timeouts, service_runtimes
from tests.conftest import SUGGEST_CONTINUE_AS_NEW_AT
from tests.e2e import BRIDGE, FULL_SANDBOX, graph_request, outcome, pushed_segment, submit, wait_for
from workflows.inputs import JobInput
from workflows.job import JobWorkflow
from workflows.names import DATAPLANE_FAILED, HANDBACK, JOB_WORKFLOW, WORKFLOW_QUEUE
from workflows.patches import EVERY_PATCH_ABOVE

pytestmark = pytest.mark.timeout(120)

HISTORIES = Path(__file__).parent / "histories"
SPEC = contracts()
SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "replay"}}}
FAILING = {
    "mode": "fixed_graph",
    "variant": "sadtalker",
    "params": {"script": {"prompt": "replay"}, "generate_video": {"simulateFailure": "boom"}},
}
# Layers of node-plane nodes, each layer waiting on the whole previous one (so the job is between steps after
# each layer): enough layers that Temporal suggests continue-as-new once (about 20 events a layer).
LAYER_WIDTH = 4
LAYERS = SUGGEST_CONTINUE_AS_NEW_AT // 20 + 4


async def replay_and_record(name: str, history: WorkflowHistory) -> None:
    await Replayer(workflows=[JobWorkflow], workflow_runner=FULL_SANDBOX).replay_workflow(history)
    if os.environ.get("SPINBOT_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())


async def history_of(stack, job_id: str, run_id: str | None = None) -> WorkflowHistory:
    return await stack.temporal.get_workflow_handle(job_id, run_id=run_id).fetch_history()


def types(history: WorkflowHistory) -> list[EventType.ValueType]:
    return [event.event_type for event in history.events]


def signals(history: WorkflowHistory) -> list[str]:
    return [
        event.workflow_execution_signaled_event_attributes.signal_name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


PATCH_MARKER = "core_patch"
UPSERT = "upsert"


def commands_by_workflow_task(history: WorkflowHistory) -> list[list[str]]:
    """The events after each completed workflow task, up to the next one: markers by name (patch, local activity),
    "upsert" for a search-attribute upsert, the others by event type."""
    tasks: list[list[str]] = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks.append([])
        elif tasks and event.HasField("marker_recorded_event_attributes"):
            tasks[-1].append(event.marker_recorded_event_attributes.marker_name)
        elif tasks and event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            tasks[-1].append(UPSERT)
        elif tasks:
            tasks[-1].append(EventType.Name(event.event_type))
    return tasks


def patch_ids(history: WorkflowHistory) -> list[str]:
    markers = [
        e.marker_recorded_event_attributes for e in history.events if e.HasField("marker_recorded_event_attributes")
    ]
    return [
        json.loads(m.details["patch-data"].payloads[0].data)["id"] for m in markers if m.marker_name == PATCH_MARKER
    ]


def started_input(history: WorkflowHistory) -> dict:
    started = history.events[0].workflow_execution_started_event_attributes
    return json.loads(started.input.payloads[0].data)


def python_job(job_id: str, ceiling: float) -> JobInput:
    """One python-plane node, started straight on Temporal (no data plane will take it)."""
    graph = {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "context": {"pipeline": "custom"},
        "metadata": {},
        "nodes": [{"id": "py1", "service": "dummy.dummy_task", "plane": "python", "status": "pending"}],
        "edges": [],
    }
    return JobInput(graph, service_runtimes(SPEC), ceiling, 1, python_timeouts(SPEC))


async def test_node_only(stack, llm):
    node = {"id": "script", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "node only"}}
    job_id = await submit(stack, graph_request([node], []))
    assert await outcome(stack, job_id) == ("completed", None)
    history = await history_of(stack, job_id)
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types(history)
    assert not signals(history) and EventType.EVENT_TYPE_TIMER_STARTED not in types(history)
    await replay_and_record("node_only", history)


async def test_hybrid(stack, llm):
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    history = await history_of(stack, job_id)
    assert signals(history) == [HANDBACK]
    assert EventType.EVENT_TYPE_TIMER_CANCELED in types(history), "the segment's wait ended by the handback"
    # One patch marker, in the first workflow task: the job's status is upserted there and at the end, and no
    # task in between upserts (sdk-core upserts TemporalChangeVersion with each patch marker it records).
    tasks = commands_by_workflow_task(history)
    assert patch_ids(history) == [EVERY_PATCH_ABOVE] and PATCH_MARKER in tasks[0]
    assert [UPSERT in kinds for kinds in tasks] == [True] + [False] * (len(tasks) - 2) + [True]
    await replay_and_record("hybrid", history)


async def test_dataplane_failure_handed_back(stack, llm):
    async with stack.dataplane(handback_failures=True):
        job_id = await submit(stack, FAILING)
        state, message = await outcome(stack, job_id)
    assert state == "failed" and message and "boom" in message
    history = await history_of(stack, job_id)
    assert signals(history) == [HANDBACK]
    await replay_and_record("dataplane_failed_handback", history)


async def test_dataplane_failure_the_existing_workers_way(stack, llm):
    """The reference worker's default: the failed graph into job:<id> and status failed; the relay signals it."""
    job_id = await submit(stack, FAILING)
    state, message = await outcome(stack, job_id)
    assert state == "failed" and message and "boom" in message
    history = await history_of(stack, job_id)
    assert signals(history) == [DATAPLANE_FAILED]
    await replay_and_record("dataplane_failed_graph", history)


async def test_dataplane_failure_whose_graph_was_overwritten(stack):
    """The data plane published `failed` but job:<id> holds the workflow's graph (no failed node): the segment
    fails with the reported reason (the dataplane-failure-without-graph patch)."""
    job_id = str(uuid.uuid4())
    async with stack.no_dataplane():
        await stack.temporal.start_workflow(
            JOB_WORKFLOW, python_job(job_id, 600.0), id=job_id, task_queue=WORKFLOW_QUEUE
        )
        await pushed_segment(stack.redis, job_id)
        status = {"jobId": job_id, "status": "failed", "created": str(int(time.time() * 1000))}
        await stack.redis.publish(BRIDGE.channel("status", job_id), json.dumps(status))
        state, message = await outcome(stack, job_id, timeout=15)
    assert state == "failed" and message and 'node "py1"' in message
    history = await history_of(stack, job_id)
    assert signals(history) == [DATAPLANE_FAILED] and EventType.EVENT_TYPE_TIMER_FIRED not in types(history)
    await replay_and_record("dataplane_failed_overwritten", history)


async def test_segment_timeout(stack):
    job_id = str(uuid.uuid4())
    async with stack.no_dataplane():
        await stack.temporal.start_workflow(JOB_WORKFLOW, python_job(job_id, 1.0), id=job_id, task_queue=WORKFLOW_QUEUE)
        state, message = await outcome(stack, job_id)
    assert state == "failed" and message and "did not hand back segment 1 within 1s" in message
    history = await history_of(stack, job_id)
    assert EventType.EVENT_TYPE_TIMER_FIRED in types(history) and not signals(history)
    await replay_and_record("segment_timeout", history)


async def test_cancel(stack, llm):
    llm.delay = 3  # the script node is still running when the cancel arrives
    job_id = await submit(stack, SADTALKER)

    async def script_running():
        graph = (await stack.api.get(f"/api/jobs/{job_id}/graph")).json().get("graph") or {}
        return any(n["id"] == "script" and n["status"] == "running" for n in graph.get("nodes", []))

    await wait_for(script_running, what="the script node to run")
    assert (await stack.api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
    with pytest.raises(WorkflowFailureError) as ended:
        await asyncio.wait_for(stack.temporal.get_workflow_handle(job_id).result(), 15)
    assert isinstance(ended.value.cause, CancelledError)
    history = await history_of(stack, job_id)
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in types(history)
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in types(history)
    assert types(history)[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    await replay_and_record("cancel", history)


async def test_retry_attempt_2(stack, llm):
    job_id = await submit(stack, FAILING)
    assert (await outcome(stack, job_id))[0] == "failed"
    first_run = (await stack.temporal.get_workflow_handle(job_id).describe()).run_id
    assert (await stack.api.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    state, message = await outcome(stack, job_id)
    assert state == "failed" and message and "boom" in message
    assert (await stack.temporal.get_workflow_handle(job_id).describe()).run_id != first_run
    history = await history_of(stack, job_id)
    retried = started_input(history)
    assert retried["attempt"] == 2
    assert {n["id"]: n["status"] for n in retried["graph"]["nodes"]}["script"] == "completed"
    assert signals(history) == [DATAPLANE_FAILED]
    await replay_and_record("retry_attempt_2", history)


async def test_continue_as_new(stack, llm):
    def node_id(layer: int, i: int) -> str:
        return f"n{layer}.{i}"

    nodes = [
        {"id": node_id(layer, i), "service": "llm.generate_script", "plane": "node", "params": {"prompt": "p"}}
        for layer in range(LAYERS)
        for i in range(LAYER_WIDTH)
    ]
    edges = [
        (node_id(layer, i), node_id(layer + 1, j))
        for layer in range(LAYERS - 1)
        for i in range(LAYER_WIDTH)
        for j in range(LAYER_WIDTH)
    ]
    job_id = await submit(stack, graph_request(nodes, edges))
    assert await outcome(stack, job_id, timeout=90) == ("completed", None)
    last = await history_of(stack, job_id)
    started = last.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id, f"the last run continued an earlier one ({len(last.events)} events)"
    assert started_input(last)["resumed"]["status"] == "running"
    first = await history_of(stack, job_id, run_id=started.first_execution_run_id)
    assert types(first)[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert len(first.events) >= SUGGEST_CONTINUE_AS_NEW_AT
    assert not started_input(first).get("resumed")
    print(f"continue-as-new: first run {len(first.events)} events, last run {len(last.events)} events")
    await replay_and_record("continue_as_new_first", first)
    await replay_and_record("continue_as_new_last", last)


async def test_parked_mid_wait(stack, llm):
    """A run waiting on a segment nobody takes: its history, fetched while it runs, replays (incomplete)."""
    job_id = str(uuid.uuid4())
    job = python_job(job_id, 600.0)
    script = {"id": "script", "service": "llm.generate_script", "plane": "node", "status": "pending"}
    job.graph["nodes"].insert(0, {**script, "params": {"prompt": "parked"}})
    job.graph["edges"] = [{"from": "script", "to": "py1"}]

    async def parked():
        history = await history_of(stack, job_id)
        return history if types(history)[-1] == EventType.EVENT_TYPE_TIMER_STARTED else None

    async with stack.no_dataplane():
        handle = await stack.temporal.start_workflow(JOB_WORKFLOW, job, id=job_id, task_queue=WORKFLOW_QUEUE)
        try:
            await pushed_segment(stack.redis, job_id)
            history = await wait_for(parked, what="the run to wait on its segment")
            assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types(history)
            assert EventType.EVENT_TYPE_TIMER_FIRED not in types(history)
            await replay_and_record("parked_mid_wait", history)
        finally:
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(handle.result(), 15)
