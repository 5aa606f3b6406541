"""Failures say why where users look: /api/status and WebSocket updates carry {nodeId, message, code}."""

from __future__ import annotations

import json
import uuid

import pytest

from core.failures import job_error
from tests.e2e import BRIDGE, outcome, submit
from tests.ws_clients import publish, ws_client
from workflows.names import CONTROL_SOURCE

pytestmark = pytest.mark.timeout(60)


def sadtalker(**params) -> dict:
    return {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x"}, **params}}


async def test_status_of_a_job_whose_llm_refused_names_the_script_node(stack, llm):
    llm.status = 404  # Ollama: model not found (not retried)
    job_id = await submit(stack, sadtalker())
    assert (await outcome(stack, job_id))[0] == "failed"

    body = (await stack.api.get(f"/api/status/{job_id}")).json()
    assert (body["jobId"], body["status"]) == (job_id, "failed")
    error = body["error"]
    assert set(error) == {"nodeId", "message", "code"}
    assert error["nodeId"] == "script"
    assert "HTTP 404" in error["message"] and "model 'x' not found" in error["message"]
    assert error["code"] and error["code"] != "JobFailed"


async def test_a_completed_job_has_no_error_field(stack, llm):
    job_id = await submit(stack, sadtalker())
    assert await outcome(stack, job_id) == ("completed", None)
    assert set((await stack.api.get(f"/api/status/{job_id}")).json()) == {"jobId", "status", "progress"}


async def test_websocket_pushes_and_replays_the_failing_data_plane_node(stack, llm):
    """The existing worker's way: it writes the failed graph to job:<id> and publishes `failed` itself."""
    llm.delay = 0.5  # time to subscribe before anything happens
    async with ws_client(stack.api_url) as client:
        job_id = await submit(stack, sadtalker(generate_video={"simulateFailure": "GPU fell over"}))
        await client.subscribe(job_id)
        updates = await client.updates_until(job_id, "failed", timeout=20)
    expected = {"nodeId": "generate_video", "message": "GPU fell over", "code": "SIMULATED_FAILURE"}
    assert all(u["error"] == expected for u in updates if u["status"] == "failed"), updates
    assert all("error" not in u for u in updates if u["status"] != "failed"), updates
    assert (await outcome(stack, job_id))[0] == "failed"

    async with ws_client(stack.api_url) as late:
        state = await late.subscribe(job_id)
    assert (state["status"], state["error"]) == ("failed", expected)
    assert (await stack.api.get(f"/api/status/{job_id}")).json()["error"] == expected


async def test_a_bare_failed_status_is_completed_from_the_job_graph_in_redis(stack):
    """Someone else's `failed` without an `error` field: the hub reads why from job:<id>."""
    job_id = str(uuid.uuid4())
    graph = {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "nodes": [
            {"id": "a", "service": "dummy.dummy_task", "plane": "python", "status": "completed"},
            {
                "id": "b",
                "service": "dummy.dummy_task",
                "plane": "python",
                "status": "failed",
                "error": {"message": "disk full", "code": "ENOSPC"},
            },
        ],
        "edges": [{"from": "a", "to": "b"}],
    }
    await stack.redis.set(BRIDGE.status_key(job_id), "running", ex=60)
    async with ws_client(stack.api_url) as client:
        await client.subscribe(job_id)
        await stack.redis.hset(BRIDGE.job_key(job_id), mapping={"graph": json.dumps(graph), "created": "1"})
        await stack.redis.expire(BRIDGE.job_key(job_id), 60)
        await publish(stack.redis, "status", job_id, status="failed", source=CONTROL_SOURCE)
        update = await client.recv_about(job_id)
        assert update["error"] == {"nodeId": "b", "message": "disk full", "code": "ENOSPC"}

        # A published error is used as sent, cut down to its three fields.
        await publish(
            stack.redis,
            "status",
            job_id,
            status="failed",
            error={"nodeId": "a", "message": "m", "x": 1},
            source=CONTROL_SOURCE,
        )
        update = await client.recv_about(job_id)
        assert update["error"] == {"nodeId": "a", "message": "m", "code": "JobFailed"}

        await publish(stack.redis, "status", job_id, status="running", source=CONTROL_SOURCE)
        assert "error" not in await client.recv_about(job_id)


def test_job_error_prefers_the_node_the_workflow_named_and_reports_cancellation():
    nodes = [
        {"id": "a", "status": "failed", "error": {"message": "first", "code": "A"}},
        {"id": "b", "status": "failed", "error": {"message": "second", "code": "B"}},
    ]
    assert job_error({"nodes": nodes}) == {"nodeId": "a", "message": "first", "code": "A"}
    named = {"nodes": nodes, "metadata": {"failure": {"nodeId": "b", "message": "second"}}}
    assert job_error(named) == {"nodeId": "b", "message": "second", "code": "B"}
    cancelled = {
        "nodes": [{"id": "a", "status": "failed", "error": {"message": "cancelled", "code": "Cancelled"}}],
        "metadata": {"failure": {"nodeId": None, "message": "cancelled"}},
    }
    assert job_error(cancelled) == {"nodeId": None, "message": "cancelled", "code": "Cancelled"}
    assert job_error({"nodes": [{"id": "a", "status": "completed"}]}) is None
    assert job_error("not a graph") is None
