"""Whole jobs through the API, Temporal, the relay and the reference data plane, on real services."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e import BRIDGE, graph_request, outcome, submit, wait_for

pytestmark = pytest.mark.timeout(90)


async def _all_stores(stack, store, job_id):
    detail = (await stack.api.get(f"/api/jobs/{job_id}")).json()
    keys = await stack.redis.mget(BRIDGE.status_key(job_id), BRIDGE.progress_key(job_id))
    hashed = await stack.redis.hgetall(BRIDGE.job_key(job_id))
    return detail, keys, hashed


@pytest.mark.parametrize(
    "variant, python_nodes",
    [
        ("sadtalker", ["train_voice", "generate_video", "postprocess_video"]),
        ("svd_wav2lip", ["train_voice", "train_lora", "generate_video", "postprocess_video"]),
    ],
)
async def test_pipeline_completes_and_every_store_agrees(stack, store, llm, variant, python_nodes):
    job_id = await submit(stack, {"mode": "fixed_graph", "variant": variant, "params": {"script": {"prompt": "a fox"}}})
    assert await outcome(stack, job_id) == ("completed", None)

    async def settled():
        # The workflow records its `completed` with its last step; the relays record the last progress as they
        # hear it, a moment later.
        detail, keys, hashed = await _all_stores(stack, store, job_id)
        statuses = [e["status"] for e in detail["events"]]
        progresses = [e["progress"] for e in detail["events"] if e["progress"] is not None]
        done = "completed" in statuses and keys[0] == "completed" and progresses and progresses[0] == 1.0
        return (detail, keys, hashed) if done else None

    detail, (status_key, progress_key), hashed = await wait_for(settled, what="events and keys to settle")
    job, graph = detail["job"], detail["job"]["lastGraph"]
    assert (job["status"], job["progress"]) == ("completed", 1.0)
    assert (status_key, float(progress_key)) == ("completed", 1.0)
    assert json.loads(hashed["graph"]) == graph
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert all(n["status"] == "completed" for n in nodes.values())
    assert nodes["script"]["output"]["narration"] == "Hello from the test peer."
    assert "a fox" in llm.requests[-1]["prompt"]
    for node_id in python_nodes:
        assert nodes[node_id]["output"]["simulated"] is True
    progress = {node_id: node["output"]["currentProgress"] for node_id, node in nodes.items()}
    # Progress only rises along each edge; parallel branches (svd_wav2lip's) may finish in either order.
    assert all(progress[edge["from"]] <= progress[edge["to"]] for edge in graph["edges"]), progress
    assert progress[graph["nodes"][-1]["id"]] == pytest.approx(1.0)
    statuses = [e["status"] for e in reversed(detail["events"]) if e["status"]]
    assert statuses[0] == "advertised" and statuses[-1] == "completed" and "running" in statuses
    assert statuses.count("completed") == 1
    progresses = [e["progress"] for e in reversed(detail["events"]) if e["progress"] is not None]
    assert progresses[-1] == pytest.approx(1.0)
    status = (await stack.api.get(f"/api/status/{job_id}")).json()
    assert status == {"jobId": job_id, "status": "completed", "progress": 1.0}


async def test_node_plane_only_graph_runs_independent_nodes_at_once(stack, llm):
    llm.delay = 0.6
    request = graph_request(
        [
            {"id": "a", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "prompt-alpha"}},
            {"id": "b", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "prompt-beta"}},
            {"id": "join", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "prompt-gamma"}},
        ],
        [("a", "join"), ("b", "join")],
    )
    job_id = await submit(stack, request)
    assert await outcome(stack, job_id) == ("completed", None)
    spans = {
        marker: (s["t0"], s["t1"])
        for s in llm.spans
        for marker in ("prompt-alpha", "prompt-beta")
        if marker in s["prompt"]
    }
    (a0, a1), (b0, b1) = spans["prompt-alpha"], spans["prompt-beta"]
    assert a0 < b1 and b0 < a1, "the two independent node-plane nodes must overlap in time"


async def test_python_node_failure_fails_job_and_workflow(stack, llm):
    async with stack.dataplane(handback_failures=True):
        job_id = await _submit_failing(stack)
        state, message = await outcome(stack, job_id)
    await _assert_failed(stack, job_id, state, message)


async def test_failure_the_existing_workers_way_is_detected(stack, llm):
    job_id = await _submit_failing(stack)  # default worker: status failed + job:<id> hash, no handback
    state, message = await outcome(stack, job_id)
    await _assert_failed(stack, job_id, state, message)


async def _submit_failing(stack) -> str:
    return await submit(
        stack,
        {
            "mode": "fixed_graph",
            "variant": "sadtalker",
            "params": {"script": {"prompt": "x"}, "generate_video": {"simulateFailure": "GPU fell over"}},
        },
    )


async def _assert_failed(stack, job_id, state, message):
    assert state == "failed"
    assert 'node "generate_video"' in message and "GPU fell over" in message

    async def failed_row():
        detail = (await stack.api.get(f"/api/jobs/{job_id}")).json()
        return detail if detail["job"]["status"] == "failed" else None

    detail = await wait_for(failed_row, what="the jobs row to say failed")
    nodes = {n["id"]: n for n in detail["job"]["lastGraph"]["nodes"]}
    assert nodes["generate_video"]["status"] == "failed"
    assert nodes["generate_video"]["error"]["message"] == "GPU fell over"
    assert nodes["train_voice"]["status"] == "completed"
    assert nodes["postprocess_video"]["status"] == "skipped"
    description = await stack.temporal.get_workflow_handle(job_id).describe()
    assert description.status.name == "FAILED"


def test_workflow_module_loads_no_io_libraries():
    code = "import sys, workflows.job; print(sorted(m for m in ('asyncpg','redis','httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
