"""Browsing the API: GET /api/pipelines, job-list filters with a total, capabilities look-ups kept out of sight."""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.contracts import contracts
from tests.e2e import graph_request, outcome, submit
from tests.stack import api_replica
from tests.ws_clients import metrics

pytestmark = pytest.mark.timeout(60)

SCRIPT = {"id": "script", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "x"}}


def job_of(pipeline: str, *, fail: bool) -> dict:
    nodes = [SCRIPT]
    edges = []
    if fail:
        nodes.append(
            {"id": "render", "service": "dummy.dummy_task", "plane": "python", "params": {"simulateFailure": "no"}}
        )
        edges.append(("script", "render"))
    request = graph_request(nodes, edges)
    request["graph"]["context"] = {"pipeline": pipeline}
    return request


async def test_pipelines_lists_every_configured_pipeline_with_nodes_edges_and_weights(stack):
    reply = await stack.api.get("/api/pipelines")
    assert reply.status_code == 200
    listed = {p["name"]: p for p in reply.json()["pipelines"]}
    assert set(listed) == set(contracts().pipelines) >= {"sadtalker", "svd_wav2lip", "f5tts_infinitetalk"}
    sadtalker = listed["sadtalker"]
    assert [n["id"] for n in sadtalker["nodes"]] == ["script", "train_voice", "generate_video", "postprocess_video"]
    assert sadtalker["nodes"][0] == {
        "id": "script",
        "name": "Write script",
        "service": "llm.generate_script",
        "plane": "node",
        "progressWeight": 0.05,
        "params": {},
    }
    assert sadtalker["weights"] == {
        "script": 0.05,
        "train_voice": 0.25,
        "generate_video": 0.4,
        "postprocess_video": 0.3,
    }
    assert {(e["from"], e["to"]) for e in listed["svd_wav2lip"]["edges"]} == {
        ("script", "train_voice"),
        ("script", "train_lora"),
        ("train_voice", "generate_video"),
        ("train_lora", "generate_video"),
        ("generate_video", "postprocess_video"),
    }


async def test_job_list_filters_by_status_and_pipeline_with_a_total(stack, llm):
    pipeline = f"browse-{uuid.uuid4().hex[:8]}"
    done = await submit(stack, job_of(pipeline, fail=False))
    failed = await submit(stack, job_of(pipeline, fail=True))
    assert (await outcome(stack, done))[0] == "completed"
    assert (await outcome(stack, failed))[0] == "failed"

    async def listed(**params) -> dict:
        reply = await stack.api.get("/api/jobs", params=params)
        assert reply.status_code == 200, reply.text
        return reply.json()

    both = await listed(pipeline=pipeline)
    assert [j["jobId"] for j in both["jobs"]] == [failed, done]
    assert both["pagination"] == {"limit": 20, "offset": 0, "total": 2}
    assert {j["pipeline"] for j in both["jobs"]} == {pipeline}

    only_failed = await listed(pipeline=pipeline, status="failed")
    assert [j["jobId"] for j in only_failed["jobs"]] == [failed] and only_failed["pagination"]["total"] == 1
    assert [j["jobId"] for j in (await listed(pipeline=pipeline, status="completed"))["jobs"]] == [done]

    page = await listed(pipeline=pipeline, limit=1, offset=1)
    assert [j["jobId"] for j in page["jobs"]] == [done]
    assert page["pagination"] == {"limit": 1, "offset": 1, "total": 2}

    nothing = await listed(pipeline=f"{pipeline}-none", status="failed")
    assert nothing == {"jobs": [], "pagination": {"limit": 20, "offset": 0, "total": 0}}

    everything = await listed(status="completed", limit=100)
    assert all(j["status"] == "completed" for j in everything["jobs"])
    assert everything["pagination"]["total"] >= 1


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"status": "FAILED"},
        {"status": ""},
        {"include": "secrets"},
        {"pipeline": "p" * 201},
        {"pipeline": "a\x00"},  # before: 500, PostgreSQL refusing the NUL
    ],
)
async def test_job_list_refuses_filters_it_cannot_apply(stack, params):
    reply = await stack.api.get("/api/jobs", params=params)
    assert reply.status_code == 400, reply.text
    assert set(reply.json()) == {"error"} and reply.json()["error"]


async def test_capabilities_lookups_are_not_listed_nor_counted_as_submitted_jobs(stack):
    before = await metrics(stack.api)
    # A replica of its own: a fresh capabilities cache, so a look-up really runs now.
    async with api_replica(stack.settings, stack.temporal) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as replica:
            assert (await replica.get("/api/capabilities")).status_code == 200
    after = await metrics(stack.api)
    submitted = [key for key in after if key[0] == "spinbot_jobs_submitted_total"]
    assert ("spinbot_jobs_submitted_total", (("pipeline", "capabilities"),)) not in submitted
    assert {k: after[k] for k in submitted} == {k: before.get(k, 0.0) for k in submitted}

    default = (await stack.api.get("/api/jobs", params={"limit": 100})).json()
    assert all(j["pipeline"] != "capabilities" for j in default["jobs"])
    for params in ({"include": "capabilities"}, {"pipeline": "capabilities"}):
        shown = (await stack.api.get("/api/jobs", params={**params, "limit": 100})).json()
        assert any(j["pipeline"] == "capabilities" for j in shown["jobs"]), params
    with_lookups = (await stack.api.get("/api/jobs", params={"include": "capabilities"})).json()
    assert with_lookups["pagination"]["total"] > default["pagination"]["total"]
