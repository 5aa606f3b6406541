"""What operators see and do in the Temporal UI: every step named, node details, reset of a failed job (issue 10)."""

from __future__ import annotations

import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowHandle

from core.contracts import contracts
from tests.e2e import outcome, submit, wait_for
from tests.ws_clients import ws_client

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "ui"}}}
BRIDGE = contracts().bridge


async def summaries(handle: WorkflowHandle, event_type: int) -> list[str]:
    """The user-metadata summaries of one kind of history event, decoded."""
    history = await handle.fetch_history()
    converter = handle._client.data_converter.payload_converter  # the client's own converter
    return [
        converter.from_payload(event.user_metadata.summary, str)
        for event in history.events
        if event.event_type == event_type and event.user_metadata.HasField("summary")
    ]


async def test_every_step_of_a_hybrid_job_is_named(stack, llm):
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    handle = stack.temporal.get_workflow_handle(job_id)

    timers = await summaries(handle, EventType.EVENT_TYPE_TIMER_STARTED)
    assert timers == ["data plane (segment 1): Train voice → Generate video → Post-process video"]

    steps = await summaries(handle, EventType.EVENT_TYPE_MARKER_RECORDED)
    assert steps[0] == "record running"
    assert "hand segment 1 to the data plane" in steps
    assert steps[-1] == "record completed"

    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    lines = metadata.current_details.splitlines()
    names = ("Write script", "Train voice", "Generate video", "Post-process video")
    assert [line for line in lines if "completed" in line] == [
        f"- ✓ **{name}** ({plane}): completed" for name, plane in zip(names, ["node"] + ["python"] * 3, strict=True)
    ]


async def test_reset_of_a_failed_job_in_the_temporal_ui_runs_it_to_completed(stack, store, llm):
    llm.status = 404  # the model is missing: the script node fails at once, without retries
    job_id = await submit(stack, SADTALKER)
    state, message = await outcome(stack, job_id)
    assert state == "failed" and message and "script" in message
    assert (await stack.api.get(f"/api/status/{job_id}")).json()["status"] == "failed"
    llm.reset()  # the operator fixed Ollama

    async with ws_client(stack.api_url) as client:
        await client.subscribe(job_id)
        handle = stack.temporal.get_workflow_handle(job_id)
        history = await handle.fetch_history()
        first_task = next(
            e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        description = await handle.describe()
        # The very call the Temporal UI makes for "Reset".
        await stack.temporal.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=stack.temporal.namespace,
                workflow_execution=WorkflowExecution(workflow_id=job_id, run_id=description.run_id),
                reason="ollama is back",
                workflow_task_finish_event_id=first_task,
                request_id=str(uuid.uuid4()),
            )
        )
        assert await outcome(stack, job_id) == ("completed", None)
        updates = await client.updates_until(job_id, "completed", timeout=20)
        assert updates[-1]["status"] == "completed" and updates[-1]["progress"] == 1.0

    assert await stack.redis.get(BRIDGE.status_key(job_id)) == "completed"

    async def recorded():
        row = await store.job(job_id)
        return row if row and row["status"] == "completed" else None

    row = await wait_for(recorded, what="the completed row")
    assert all(node["status"] == "completed" for node in row["last_graph"]["nodes"])
