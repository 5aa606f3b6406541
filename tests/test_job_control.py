"""Job control: cancel, retry (only what failed runs again), the live graph, and Idempotency-Key on POST /api/jobs."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError

from tests.e2e import BRIDGE, outcome, submit, wait_for

pytestmark = pytest.mark.timeout(60)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "a fox"}}}
FAILING = {
    "mode": "fixed_graph",
    "variant": "sadtalker",
    "params": {"script": {"prompt": "retry me"}, "generate_video": {"simulateFailure": "boom"}},
}
UNKNOWN_IDS = [str(uuid.uuid4()), "garbage", "%20"]


def assert_error(reply, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def by_id(graph: dict) -> dict[str, dict]:
    return {node["id"]: node for node in graph["nodes"]}


async def job_detail(stack, job_id: str) -> dict:
    reply = await stack.api.get(f"/api/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()["job"]


async def running_script(stack, job_id: str) -> dict:
    """The live graph once the (slow) script node is running."""

    async def script_running():
        reply = await stack.api.get(f"/api/jobs/{job_id}/graph")
        if reply.status_code != 200:
            return None
        live = reply.json()
        return live if by_id(live["graph"])["script"]["status"] == "running" else None

    return await wait_for(script_running, timeout=10, what="the script node to run")


async def cancelled_job(stack, llm) -> str:
    """A sadtalker job cancelled while its slow script node runs; returns its id once the workflow has ended."""
    llm.delay = 3
    job_id = await submit(stack, SADTALKER)
    await running_script(stack, job_id)

    reply = await stack.api.post(f"/api/jobs/{job_id}/cancel")

    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert set(body) == {"jobId", "message"} and body["jobId"] == job_id and isinstance(body["message"], str)
    handle = stack.temporal.get_workflow_handle(job_id)
    with pytest.raises(WorkflowFailureError) as ended:
        await asyncio.wait_for(handle.result(), 10)
    assert isinstance(ended.value.cause, CancelledError)
    return job_id


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_a_running_job(stack, llm):
    job_id = await cancelled_job(stack, llm)

    assert (await stack.temporal.get_workflow_handle(job_id).describe()).status == WorkflowExecutionStatus.CANCELED

    async def failed_status():
        status = (await stack.api.get(f"/api/status/{job_id}")).json()
        return status if status["status"] == "failed" else None

    status = await wait_for(failed_status, what="status failed")
    assert set(status) == {"jobId", "status", "progress", "error"} and status["jobId"] == job_id
    assert status["error"] == {"nodeId": None, "message": "cancelled", "code": "Cancelled"}
    job = await job_detail(stack, job_id)
    assert job["status"] == "failed"
    nodes = by_id(job["lastGraph"])
    assert nodes["script"]["status"] == "failed" and "cancelled" in nodes["script"]["error"]["message"].lower()
    assert [nodes[n]["status"] for n in ("train_voice", "generate_video", "postprocess_video")] == ["skipped"] * 3
    assert job["lastGraph"]["metadata"]["failure"]["message"] == "cancelled"
    message = assert_error(await stack.api.post(f"/api/jobs/{job_id}/cancel"), 409)
    assert "not running" in message


async def test_cancel_stops_node_plane_work(stack, llm):
    job_id = await cancelled_job(stack, llm)
    settled = await stack.redis.get(BRIDGE.progress_key(job_id))

    await asyncio.sleep(1.5)  # three progress ticks of a still-running script activity

    assert await stack.redis.get(BRIDGE.progress_key(job_id)) == settled


async def test_cancel_a_finished_or_unknown_job(stack, llm):
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    assert "not running" in assert_error(await stack.api.post(f"/api/jobs/{job_id}/cancel"), 409)
    for unknown in UNKNOWN_IDS:
        assert "not found" in assert_error(await stack.api.post(f"/api/jobs/{unknown}/cancel"), 404)


# --- retry --------------------------------------------------------------------------------------


async def test_retry_reruns_only_failed_and_skipped_nodes(stack, llm):
    job_id = await submit(stack, FAILING)
    state, message = await outcome(stack, job_id)
    assert state == "failed" and "boom" in (message or "")
    handle = stack.temporal.get_workflow_handle(job_id)
    first_run = (await handle.describe()).run_id

    async def failed_row():
        job = await job_detail(stack, job_id)
        return job if job["status"] == "failed" else None

    before = by_id((await wait_for(failed_row, what="the row to say failed"))["lastGraph"])
    assert [before[n]["status"] for n in ("script", "train_voice", "generate_video", "postprocess_video")] == [
        "completed",
        "completed",
        "failed",
        "skipped",
    ]
    llm_calls = len(llm.requests)

    reply = await stack.api.post(f"/api/jobs/{job_id}/retry")

    assert reply.status_code == 200, reply.text
    accepted = reply.json()
    assert set(accepted) == {"jobId", "status", "progress", "created"}
    assert (accepted["jobId"], accepted["status"], accepted["progress"]) == (job_id, "advertised", 0)
    state, message = await outcome(stack, job_id)
    assert state == "failed" and "boom" in (message or "")  # the params still ask for the failure
    description = await handle.describe()
    assert description.run_id != first_run and description.status == WorkflowExecutionStatus.FAILED

    async def second_attempt_recorded():
        job = await job_detail(stack, job_id)
        return job if job["status"] == "failed" and job["lastGraph"]["metadata"].get("attempt") == 2 else None

    after = by_id((await wait_for(second_attempt_recorded, what="attempt 2 to be recorded"))["lastGraph"])
    assert len(llm.requests) == llm_calls, "the completed script node must not run again"
    for kept in ("script", "train_voice"):
        assert after[kept]["status"] == "completed" and after[kept]["output"] == before[kept]["output"]
    assert after["generate_video"]["status"] == "failed" and after["generate_video"]["error"]["message"] == "boom"
    assert after["postprocess_video"]["status"] == "skipped"

    pushed = [
        json.loads(fields["graph"])
        for _, fields in await stack.redis.xrevrange(BRIDGE.data_stream, count=500)
        if fields.get("jobId") == job_id
    ]
    retried = [g for g in pushed if g["metadata"]["handoff"]["attempt"] == 2]
    assert len(retried) == 1, "one segment pushed for the retry"
    segment = by_id(retried[0])
    assert (
        segment["train_voice"]["status"] == "completed"
        and segment["train_voice"]["output"] == before["train_voice"]["output"]
    )
    assert segment["generate_video"]["status"] == "pending" and segment["generate_video"].get("error") is None


async def test_retry_of_a_cancelled_job_runs_it_to_completion(stack, llm):
    job_id = await cancelled_job(stack, llm)
    llm.delay = 0

    async def failed_row():
        return (await job_detail(stack, job_id))["status"] == "failed"

    await wait_for(failed_row, what="the row to say failed")
    assert (await stack.api.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    assert await outcome(stack, job_id) == ("completed", None)
    nodes = by_id((await job_detail(stack, job_id))["lastGraph"])
    assert all(node["status"] == "completed" for node in nodes.values())
    assert nodes["script"]["output"]["narration"] == "Hello from the test peer."


async def test_retry_refused_unless_failed(stack, llm):
    llm.delay = 3
    running = await submit(stack, SADTALKER)
    await running_script(stack, running)
    assert "only failed jobs" in assert_error(await stack.api.post(f"/api/jobs/{running}/retry"), 409)
    llm.delay = 0
    assert (await stack.api.post(f"/api/jobs/{running}/cancel")).status_code == 202

    done = await submit(stack, SADTALKER)
    assert await outcome(stack, done) == ("completed", None)
    assert "only failed jobs" in assert_error(await stack.api.post(f"/api/jobs/{done}/retry"), 409)
    for unknown in UNKNOWN_IDS:
        assert "not found" in assert_error(await stack.api.post(f"/api/jobs/{unknown}/retry"), 404)


# --- the live graph -----------------------------------------------------------------------------


async def test_live_graph(stack, llm):
    llm.delay = 1
    job_id = await submit(stack, SADTALKER)

    live = await running_script(stack, job_id)

    assert set(live) == {"jobId", "status", "progress", "graph"}
    assert (live["jobId"], live["status"]) == (job_id, "running") and 0 <= live["progress"] < 1
    assert live["graph"]["workflowId"] == job_id
    assert by_id(live["graph"])["train_voice"]["status"] == "pending"
    assert await outcome(stack, job_id) == ("completed", None)
    done = (await stack.api.get(f"/api/jobs/{job_id}/graph")).json()
    assert (done["status"], done["progress"]) == ("completed", 1.0)
    assert all(node["status"] == "completed" for node in done["graph"]["nodes"])
    for unknown in UNKNOWN_IDS:
        assert "not found" in assert_error(await stack.api.get(f"/api/jobs/{unknown}/graph"), 404)


# --- Idempotency-Key ----------------------------------------------------------------------------


async def test_idempotency_key_on_post_jobs(stack, store, llm):
    key = f"jobs-{uuid.uuid4()}"
    first = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
    again = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
    changed = await stack.api.post(
        "/api/jobs", json={**SADTALKER, "variant": "svd_wav2lip"}, headers={"Idempotency-Key": key}
    )
    other = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": f"{key}-2"})
    unkeyed = [await stack.api.post("/api/jobs", json=SADTALKER) for _ in range(2)]

    assert all(r.status_code == 200 for r in (first, again, changed, other, *unkeyed))
    assert again.json() == first.json() and changed.json() == first.json()
    ids = {first.json()["jobId"], other.json()["jobId"], *(r.json()["jobId"] for r in unkeyed)}
    assert len(ids) == 4
    rows = await store.pool.fetchval("SELECT count(*) FROM jobs WHERE idempotency_key = $1", key)
    assert rows == 1
    for job_id in ids:
        assert (await outcome(stack, job_id))[0] == "completed"


async def test_concurrent_posts_with_one_idempotency_key_start_one_job(stack, store, llm):
    key = f"jobs-{uuid.uuid4()}"
    replies = await asyncio.gather(
        *(stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key}) for _ in range(5))
    )
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["jobId"] for r in replies}) == 1
    assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE idempotency_key = $1", key) == 1
    assert await outcome(stack, replies[0].json()["jobId"]) == ("completed", None)


async def test_overlong_idempotency_key_is_400(stack):
    assert "Idempotency-Key" in assert_error(
        await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": "k" * 201}), 400
    )


async def test_empty_idempotency_key_is_never_a_500(stack, llm):
    replies = [await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": ""}) for _ in range(2)]
    for reply in replies:
        assert reply.status_code in (200, 400), reply.text
    for reply in replies:
        if reply.status_code == 200:
            await outcome(stack, reply.json()["jobId"])


async def test_two_retries_at_once_start_one_run(stack, llm):
    """Before, both could read the job failed and both reset it: the second could set a started run's status back
    to `advertised`, and both answered 200."""
    job_id = await cancelled_job(stack, llm)
    llm.delay = 0

    async def failed_row():
        return (await job_detail(stack, job_id))["status"] == "failed"

    await wait_for(failed_row, what="the row to say failed")
    replies = await asyncio.gather(*(stack.api.post(f"/api/jobs/{job_id}/retry") for _ in range(2)))
    assert sorted(reply.status_code for reply in replies) == [200, 409], [reply.text for reply in replies]
    assert await outcome(stack, job_id) == ("completed", None)
