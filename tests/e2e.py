"""Helpers for end-to-end tests: submit through the API, wait on Temporal, read every store."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid

from temporalio.client import WorkflowFailureError
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from core.contracts import contracts
from workflows.names import STATE

BRIDGE = contracts().bridge

# The default sandbox, with redis passed through: a redis-py pool the tests dropped may be collected in a workflow's
# thread, and its finaliser imports lazily, which the sandbox would re-import and warn about. Workflows never use it.
FULL_SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("redis"))


async def submit(stack, request: dict, **headers) -> str:
    reply = await stack.api.post("/api/jobs", json=request, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()["jobId"]


async def outcome(stack, job_id: str, timeout: float = 30) -> tuple[str, str | None]:
    """('completed', None) or ('failed', <workflow failure message>) once the workflow ends."""
    handle = stack.temporal.get_workflow_handle(job_id)
    try:
        await asyncio.wait_for(handle.result(), timeout)
        return "completed", None
    except WorkflowFailureError as exc:
        return "failed", str(exc.cause)


async def wait_for(predicate, timeout: float = 10, what: str = "condition"):
    """Re-check a predicate (plain or async) until it holds; for effects that arrive asynchronously (pub/sub)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def query_state(stack, job_id: str) -> dict:
    return await stack.temporal.get_workflow_handle(job_id).query(STATE)


def graph_request(nodes: list[dict], edges: list[tuple[str, str]]) -> dict:
    full = [{"status": "pending", **node} for node in nodes]
    return {
        "mode": "process_graph",
        "graph": {
            "schema": "langgraph.v1",
            "workflowId": str(uuid.uuid4()),
            "nodes": full,
            "edges": [{"from": a, "to": b} for a, b in edges],
        },
    }


async def pushed_segment(redis, job_id: str, segment: int = 1, timeout: float = 10) -> dict:
    """The graph pushed to process:data for this job's `segment` (read without consuming)."""

    async def find():
        for _, fields in await redis.xrevrange(BRIDGE.data_stream, count=500):
            if fields.get("jobId") == job_id:
                graph = json.loads(fields["graph"])
                if graph["metadata"]["handoff"]["segment"] == segment:
                    return graph
        return None

    return await wait_for(find, timeout, f"a segment of {job_id} on {BRIDGE.data_stream}")
