"""The workflow sandbox: off in the workers by default (SPINBOT_WORKFLOW_SANDBOX turns it on). It is always on in
the replay of committed histories (tests/test_replay.py), where a forbidden call in workflow code is caught."""

from __future__ import annotations

import uuid

import pytest
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.bridge import BridgeActivities
from core.contracts import contracts, python_timeouts, service_runtimes
from core.settings import Settings
from spinbot.worker import workflow_runner
from workflows.inputs import JobInput
from workflows.job import JobWorkflow
from workflows.names import JOB_WORKFLOW

SPEC = contracts()
SANDBOXED_QUEUE = "spinbot-sandbox-test"


def test_the_workers_run_workflows_unsandboxed_unless_the_setting_asks():
    assert Settings().workflow_sandbox is False
    assert isinstance(workflow_runner(Settings().workflow_sandbox), UnsandboxedWorkflowRunner)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPINBOT_WORKFLOW_SANDBOX", "true")
        assert isinstance(workflow_runner(Settings().workflow_sandbox), SandboxedWorkflowRunner)


async def test_a_hybrid_job_completes_under_the_sandbox(stack, store):
    """The sandboxed runner still runs the real workflow: a node-plane and a python-plane node, handed back by the
    stack's data plane and relay."""
    job_id = str(uuid.uuid4())
    graph = {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "context": {"pipeline": "custom"},
        "metadata": {},
        "nodes": [
            {"id": "script", "service": "llm.generate_script", "plane": "node", "status": "pending",
             "params": {"prompt": "sandboxed"}},
            {"id": "py1", "service": "dummy.dummy_task", "plane": "python", "status": "pending"},
        ],
        "edges": [{"from": "script", "to": "py1"}],
    }  # fmt: skip
    job = JobInput(graph, service_runtimes(SPEC), 60, 1, python_timeouts(SPEC))
    bridge = BridgeActivities(stack.redis, store, SPEC.bridge)
    async with Worker(
        stack.temporal,
        task_queue=SANDBOXED_QUEUE,
        workflows=[JobWorkflow],
        activities=[bridge.sync_job],
        workflow_runner=workflow_runner(True),
    ):
        result = await stack.temporal.execute_workflow(
            JOB_WORKFLOW, job, id=job_id, task_queue=SANDBOXED_QUEUE, result_type=dict
        )
    assert result["status"] == "completed"
    assert [node["status"] for node in result["graph"]["nodes"]] == ["completed", "completed"]
