"""The workflow alone decides a job's fate (issue 8): pub/sub statuses are history, never the job's status;
reported progress is clamped to what the open work can reach; the workflow's snapshot corrects a wrong value."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from core import jobkeys
from core.event_rows import Event
from tests.e2e import BRIDGE, outcome, query_state, submit, wait_for
from tests.ws_clients import publish, ws_client
from workflows.graph import progress_ceiling

pytestmark = pytest.mark.timeout(90)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "fate"}}}


def node(node_id: str, plane: str, status: str, weight: float) -> dict:
    service = "llm.generate_script" if plane == "node" else "dummy.dummy_task"
    return {"id": node_id, "service": service, "plane": plane, "status": status, "progressWeight": weight}


# --- the ceiling -------------------------------------------------------------------------------------------


def test_ceiling_counts_completed_running_node_plane_and_reachable_python_nodes():
    # script -> a -> s2 -> b: while script runs only its own share is reachable.
    nodes = [node("script", "node", "running", 0.1), node("a", "python", "pending", 0.2)]
    nodes += [node("s2", "node", "pending", 0.3), node("b", "python", "pending", 0.4)]
    graph = {"nodes": nodes, "edges": [{"from": x, "to": y} for x, y in (("script", "a"), ("a", "s2"), ("s2", "b"))]}
    assert progress_ceiling(graph) == pytest.approx(0.1)
    nodes[0]["status"] = "completed"  # a segment with `a` is open: a python node behind s2 is not reachable
    assert progress_ceiling(graph) == pytest.approx(0.3)
    nodes[1]["status"] = "failed"
    assert progress_ceiling(graph) == pytest.approx(0.1)


def test_ceiling_takes_a_python_chain_in_one_segment():
    nodes = [node("script", "node", "completed", 0.05), node("a", "python", "pending", 0.25)]
    nodes += [node("b", "python", "pending", 0.4), node("c", "python", "pending", 0.3)]
    graph = {"nodes": nodes, "edges": [{"from": x, "to": y} for x, y in (("script", "a"), ("a", "b"), ("b", "c"))]}
    assert progress_ceiling(graph) == pytest.approx(1.0)


# --- Redis keys -----------------------------------------------------------------------------------------------


async def keys(redis, job_id: str) -> tuple[str | None, str | None]:
    return await redis.get(BRIDGE.status_key(job_id)), await redis.get(BRIDGE.progress_key(job_id))


async def run(redis, *writes) -> None:
    pipe = redis.pipeline(transaction=False)
    for write, *args in writes:
        write(pipe, BRIDGE, *args)
    await pipe.execute()


async def test_reported_progress_is_clamped_to_the_ceiling_and_only_rises(redis_client, job_id):
    await run(redis_client, (jobkeys.set_state, job_id, "running", 0.05, 0.3))
    assert await keys(redis_client, job_id) == ("running", "0.05")
    await run(redis_client, (jobkeys.report_progress, job_id, 0.9))
    assert (await keys(redis_client, job_id))[1] == "0.3"
    await run(redis_client, (jobkeys.report_progress, job_id, 0.1))
    assert (await keys(redis_client, job_id))[1] == "0.3"


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e308, -0.5, 1.5])
async def test_non_finite_or_out_of_range_progress_is_never_stored(redis_client, job_id, value):
    await run(redis_client, (jobkeys.set_state, job_id, "running", 0.05, 1.0))
    await run(redis_client, (jobkeys.report_progress, job_id, value), (jobkeys.raise_progress, job_id, value))
    assert (await keys(redis_client, job_id))[1] == "0.05"


async def test_progress_for_a_job_without_a_ceiling_is_not_stored(redis_client, job_id):
    await run(redis_client, (jobkeys.report_progress, job_id, 0.5))
    assert await keys(redis_client, job_id) == (None, None)


async def test_the_snapshot_corrects_a_wrong_high_value(redis_client, job_id):
    await redis_client.set(BRIDGE.progress_key(job_id), "0.97")  # e.g. left by a buggy worker before the fix
    await run(redis_client, (jobkeys.set_state, job_id, "running", 0.3, 0.3))
    assert (await keys(redis_client, job_id))[1] == "0.3"
    await run(redis_client, (jobkeys.set_state, job_id, "failed", 0.3, 0.1))  # a ceiling below progress: progress
    assert await keys(redis_client, job_id) == ("failed", "0.3")


# --- PostgreSQL -----------------------------------------------------------------------------------------------


def graph_of(job_id: str, *nodes: dict) -> dict:
    edges = [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(nodes)]
    return {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "context": {},
        "metadata": {},
        "nodes": list(nodes),
        "edges": edges,
    }


def event(job_id: str, status: str | None = None, progress: float | None = None) -> Event:
    return Event(job_id, uuid.uuid4().hex, status, progress)


async def test_store_records_statuses_but_never_takes_them(store, job_id):
    graph = graph_of(job_id, node("script", "node", "completed", 0.1), node("a", "python", "pending", 0.9))
    await store.create_job(job_id, graph, "custom")
    await store.save_snapshot(job_id, "running", 0.1, graph)
    assert await store.apply_event(event(job_id, status="completed"))
    assert await store.apply_event(event(job_id, status="failed"))
    assert (await store.job_status(job_id))["status"] == "running"
    assert [e["status"] for e in await store.events(job_id)] == ["failed", "completed"]


async def test_store_clamps_reported_progress_and_the_snapshot_corrects_it(store, job_id):
    script, a = node("script", "node", "completed", 0.1), node("a", "python", "pending", 0.4)
    s2 = node("s2", "node", "pending", 0.5)
    graph = graph_of(job_id, script, a, s2)
    await store.create_job(job_id, graph, "custom")
    await store.save_snapshot(job_id, "running", 0.1, graph)  # ceiling 0.5: script and a
    await store.apply_event(event(job_id, progress=0.95))
    assert (await store.job_status(job_id))["progress"] == pytest.approx(0.5)
    for bad in (float("inf"), float("nan"), -1.0, 2.0):
        await store.apply_event(event(job_id, progress=bad))
    assert (await store.job_status(job_id))["progress"] == pytest.approx(0.5)
    a["status"] = "failed"
    await store.save_snapshot(job_id, "failed", 0.1, graph)
    assert dict(await store.job_status(job_id)) == {"status": "failed", "progress": pytest.approx(0.1)}
    await store.apply_event(event(job_id, progress=0.99))  # a late report never moves a finished job
    assert (await store.job_status(job_id))["progress"] == pytest.approx(0.1)


# --- the whole stack --------------------------------------------------------------------------------------------


async def workflow_running(stack, job_id: str) -> bool:
    description = await stack.temporal.get_workflow_handle(job_id).describe()
    return description.status is not None and description.status.name == "RUNNING"


async def test_a_data_plane_completed_never_finishes_a_running_job(stack, llm):
    async with stack.no_dataplane():
        job_id = await submit(stack, SADTALKER)
        await wait_for(lambda: _segment_pushed(stack, job_id), 20, "the segment push")
        async with ws_client(stack.api_url) as watcher:
            assert (await watcher.subscribe(job_id))["status"] == "running"
            await publish(stack.redis, "status", job_id, status="completed")
            await publish(stack.redis, "progress", job_id, progress=1)
            # Pub/sub keeps one publisher's order: the progress update comes after whatever the status caused.
            pushed = await watcher.recv_about(job_id)
            assert (pushed["status"], pushed["progress"]) == ("running", 1.0), pushed

        async def recorded():
            reply = await stack.api.get(f"/api/jobs/{job_id}")
            return any(e["status"] == "completed" for e in reply.json()["events"])

        await wait_for(recorded, 10, "the completed event in the history")
        status = (await stack.api.get(f"/api/status/{job_id}")).json()
        row = (await stack.api.get(f"/api/jobs/{job_id}")).json()["job"]
        assert (status["status"], row["status"]) == ("running", "running")
        assert await workflow_running(stack, job_id)
    assert await outcome(stack, job_id) == ("completed", None)
    assert (await stack.api.get(f"/api/status/{job_id}")).json()["status"] == "completed"


async def _segment_pushed(stack, job_id: str) -> bool:
    state = await query_state(stack, job_id)
    return bool((state["graph"].get("metadata") or {}).get("handoff"))


async def test_reported_progress_is_clamped_to_the_open_segment_then_the_job_completes(stack, llm):
    # a (python) -> s2 (node plane) -> b (python): while a's segment is open, a's share is the most anyone may show.
    nodes = [
        {
            "id": "a",
            "service": "dummy.dummy_task",
            "plane": "python",
            "progressWeight": 0.25,
            "input": {"currentProgress": 0},
        },
        {
            "id": "s2",
            "service": "llm.generate_script",
            "plane": "node",
            "progressWeight": 0.5,
            "params": {"prompt": "x"},
        },
        {"id": "b", "service": "dummy.dummy_task", "plane": "python", "progressWeight": 0.25},
    ]
    request = {
        "mode": "process_graph",
        "graph": {"nodes": nodes, "edges": [{"from": "a", "to": "s2"}, {"from": "s2", "to": "b"}]},
    }
    async with stack.no_dataplane():
        job_id = await submit(stack, request)
        await wait_for(lambda: _segment_pushed(stack, job_id), 20, "the segment push")

        async def ceiling_recorded():
            return await stack.redis.hget(BRIDGE.job_key(job_id), jobkeys.CEILING_FIELD)

        assert float(await wait_for(ceiling_recorded, 10, "the ceiling")) == pytest.approx(0.25)
        await publish(stack.redis, "progress", job_id, progress=0.9)
        await publish(stack.redis, "progress", job_id, progress="0.2")

        async def progress_seen():
            value = await stack.redis.get(BRIDGE.progress_key(job_id))
            return value if value and float(value) > 0 else None

        await wait_for(progress_seen, 10, "reported progress")
        await asyncio.sleep(0.3)  # let the second report land too (it must not lower the first)
        assert float(await stack.redis.get(BRIDGE.progress_key(job_id))) == pytest.approx(0.25)
    assert await outcome(stack, job_id) == ("completed", None)
    status = (await stack.api.get(f"/api/status/{job_id}")).json()
    assert (status["status"], status["progress"]) == ("completed", 1)


async def test_a_failed_job_ends_at_the_workflows_progress_not_a_reported_one(stack, llm):
    request = {
        "mode": "fixed_graph",
        "variant": "sadtalker",
        "params": {"script": {"prompt": "fail"}, "train_voice": {"simulateFailure": "boom"}},
    }
    async with stack.no_dataplane():
        job_id = await submit(stack, request)
        await wait_for(lambda: _segment_pushed(stack, job_id), 20, "the segment push")
        await publish(stack.redis, "progress", job_id, progress=0.99)

        async def raised():
            value = await stack.redis.get(BRIDGE.progress_key(job_id))
            return value and float(value) > 0.5

        await wait_for(raised, 10, "the reported progress")  # within the segment's reach: shown meanwhile
    assert (await outcome(stack, job_id))[0] == "failed"
    final = (await query_state(stack, job_id))["progress"]
    assert final == pytest.approx(0.05)

    async def settled():
        status = (await stack.api.get(f"/api/status/{job_id}")).json()
        row = (await stack.api.get(f"/api/jobs/{job_id}")).json()["job"]
        return status["status"] == "failed" and (status["progress"], row["progress"])

    deadline = time.monotonic() + 10
    while (values := await settled()) != (pytest.approx(final), pytest.approx(final)):
        assert time.monotonic() < deadline, values
        await asyncio.sleep(0.05)
