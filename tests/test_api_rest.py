"""The REST contract of PROTOCOL §5, shape by shape, against the live control plane."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from api import (
    metrics,
    readiness,
    routes_artifacts,
    routes_capabilities,
    routes_catalog,
    routes_control,
    routes_jobs,
    routes_uploads,
)
from api.app import create_app
from core.contracts import contracts
from tests.e2e import BRIDGE, graph_request, outcome, submit, wait_for
from tests.stack import api_replica

pytestmark = pytest.mark.timeout(60)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "a fox"}}}
FRONTEND_ORIGINS = ["http://localhost:3001", "http://127.0.0.1:3001"]
STATUSES = {"advertised", "queued", "running", "completed", "failed"}


def assert_error(reply: httpx.Response, status: int) -> str:
    """The reply is `status` with exactly {"error": <non-empty string>}; returns the message."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert "Traceback" not in body["error"]
    return body["error"]


async def newest_job_id(stack) -> str | None:
    jobs = (await stack.api.get("/api/jobs", params={"limit": 1})).json()["jobs"]
    return jobs[0]["jobId"] if jobs else None


async def completed_job(stack) -> str:
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    return job_id


async def test_health(stack):
    reply = await stack.api.get("/health")
    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


# --- POST /api/jobs ---------------------------------------------------------------------------


async def test_accepted_job_shape_and_progress_key_from_the_start(stack, llm):
    llm.delay = 2  # the script node keeps the job at progress 0
    before = time.time() * 1000
    reply = await stack.api.post("/api/jobs", json=SADTALKER)
    progress_key = await stack.redis.get(BRIDGE.progress_key(reply.json()["jobId"]))

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"jobId", "status", "progress", "created"}
    assert isinstance(body["jobId"], str) and uuid.UUID(body["jobId"])
    assert (body["status"], body["progress"]) == ("advertised", 0)
    assert isinstance(body["created"], str) and body["created"].isdigit()
    assert before - 5000 <= int(body["created"]) <= time.time() * 1000 + 5000
    assert progress_key == "0"
    assert await stack.redis.ttl(BRIDGE.progress_key(body["jobId"])) > 0

    assert (await stack.api.post(f"/api/jobs/{body['jobId']}/cancel")).status_code == 202
    assert (await outcome(stack, body["jobId"]))[0] == "failed"


def _graph(nodes, edges, **extra):
    request = graph_request(nodes, edges)
    request["graph"].update(extra)
    return request


SCRIPT = {"id": "script", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "p"}}
DUMMY = {"service": "dummy.dummy_task", "plane": "python"}

BAD_REQUESTS = {
    "array-body": ([], None),
    "string-body": ("fixed_graph", None),
    "no-mode": ({"variant": "sadtalker"}, None),
    "mode-wrong-type": ({"mode": 5, "variant": "sadtalker"}, None),
    "unknown-mode": ({"mode": "freestyle", "variant": "sadtalker"}, None),
    "variant-wrong-type": ({"mode": "fixed_graph", "variant": 5}, "variant"),
    "unknown-variant": ({"mode": "fixed_graph", "variant": "nope"}, 'unknown variant "nope"'),
    "params-array": ({"mode": "fixed_graph", "variant": "sadtalker", "params": []}, "params"),
    "params-node-string": ({"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": "x"}}, "script"),
    "params-unknown-node": ({"mode": "fixed_graph", "variant": "sadtalker", "params": {"ghost": {}}}, '"ghost"'),
    "graph-number": ({"mode": "process_graph", "graph": 5}, "graph"),
    "graph-bad-json-string": ({"mode": "process_graph", "graph": "{nope"}, "graph is not valid JSON"),
    "no-nodes": (_graph([], []), "graph.nodes"),
    "cycle": (
        _graph([SCRIPT, {"id": "b", **DUMMY}, {"id": "c", **DUMMY}], [("script", "b"), ("b", "c"), ("c", "b")]),
        "cycle: b -> c -> b",
    ),
    "unknown-service": (
        _graph([SCRIPT, {"id": "x", "service": "nope.nothing", "plane": "python"}], [("script", "x")]),
        'node "x": unknown service "nope.nothing"',
    ),
    "service-on-wrong-plane": (_graph([{**SCRIPT, "plane": "python"}], []), 'node "script": unknown service'),
    "duplicate-id": (_graph([SCRIPT, SCRIPT], []), 'node "script": duplicate id'),
    "edge-to-unknown-node": (_graph([SCRIPT], [("script", "ghost")]), 'unknown node "ghost"'),
    "unreachable": (_graph([SCRIPT, {"id": "island", **DUMMY}], []), '"island"'),
    "extra-key-on-graph": (_graph([SCRIPT], [], colour="red"), "colour"),
    "extra-key-on-node": (_graph([{**SCRIPT, "colour": "red"}], []), "colour"),
    "extra-key-on-edge": (
        {
            "mode": "process_graph",
            "graph": {
                "schema": "langgraph.v1",
                "workflowId": "w",
                "nodes": [SCRIPT, {"id": "b", "status": "pending", **DUMMY}],
                "edges": [{"from": "script", "to": "b", "weight": 3}],
            },
        },
        "weight",
    ),
    "bad-status": (_graph([{**SCRIPT, "status": "sleeping"}], []), 'node "script"'),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_bad_planning_request_is_400_naming_the_problem(stack, name):
    request, named = BAD_REQUESTS[name]
    before = await newest_job_id(stack)

    message = assert_error(await stack.api.post("/api/jobs", json=request), 400)

    if named:
        assert named in message
    assert await newest_job_id(stack) == before, "no job was recorded"


@pytest.mark.parametrize("body", [b'{"mode": "fixed_graph",', b"", b"\xff\xfe", b"NaN-ish {"])
async def test_malformed_json_body_is_400(stack, body):
    reply = await stack.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert_error(reply, 400)


# --- GET /api/status/{id} ---------------------------------------------------------------------


async def test_status_shape(stack, llm):
    job_id = await completed_job(stack)
    reply = await stack.api.get(f"/api/status/{job_id}")
    assert reply.status_code == 200
    assert reply.json() == {"jobId": job_id, "status": "completed", "progress": 1.0}
    assert isinstance(reply.json()["progress"], float)


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "not-a-uuid", "12345", "%00", "x" * 300, "urn:uuid:" + str(uuid.uuid4())]
)
async def test_status_of_unknown_job_is_404(stack, job_id):
    message = assert_error(await stack.api.get(f"/api/status/{job_id}"), 404)
    assert "not found" in message


# --- GET /api/jobs ------------------------------------------------------------------------------


def page_used(body: dict) -> dict:
    """The limit and offset a job list says it used (its `total` is checked apart)."""
    return {name: body["pagination"][name] for name in ("limit", "offset")}


async def test_job_list_newest_first_with_pagination(stack, llm):
    ids = [await submit(stack, SADTALKER) for _ in range(3)]
    newest = ids[::-1]

    reply = await stack.api.get("/api/jobs", params={"limit": 3})
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"jobs", "pagination"} and page_used(body) == {"limit": 3, "offset": 0}
    assert isinstance(body["pagination"]["total"], int) and body["pagination"]["total"] >= 3
    assert [job["jobId"] for job in body["jobs"]] == newest
    for job in body["jobs"]:
        assert set(job) == {"jobId", "status", "progress", "created", "pipeline"} and job["pipeline"] == "sadtalker"
        assert job["status"] in STATUSES and isinstance(job["progress"], (int, float)) and 0 <= job["progress"] <= 1
        assert isinstance(job["created"], int) and abs(job["created"] - time.time() * 1000) < 60_000
    created = [job["created"] for job in body["jobs"]]
    assert created == sorted(created, reverse=True)

    page = (await stack.api.get("/api/jobs", params={"limit": 2, "offset": 1})).json()
    assert [job["jobId"] for job in page["jobs"]] == newest[1:3]
    assert page_used(page) == {"limit": 2, "offset": 1}

    default = (await stack.api.get("/api/jobs")).json()
    assert page_used(default) == {"limit": 20, "offset": 0}
    assert 3 <= len(default["jobs"]) <= 20 and [job["jobId"] for job in default["jobs"][:3]] == newest
    assert (await stack.api.get("/api/jobs", params={"limit": 100})).json()["pagination"]["limit"] == 100
    far = (await stack.api.get("/api/jobs", params={"offset": 1_000_000})).json()
    assert far["jobs"] == [] and page_used(far) == {"limit": 20, "offset": 1_000_000}
    assert far["pagination"]["total"] == default["pagination"]["total"]
    for job_id in ids:
        assert (await outcome(stack, job_id))[0] == "completed"


@pytest.mark.parametrize(
    ("query", "used"),
    [
        ({"limit": 0}, {"limit": 1, "offset": 0}),
        ({"limit": 500}, {"limit": 100, "offset": 0}),
        ({"limit": -1}, {"limit": 1, "offset": 0}),
        ({"limit": "abc"}, {"limit": 20, "offset": 0}),
        ({"limit": ""}, {"limit": 20, "offset": 0}),
        ({"limit": "NaN"}, {"limit": 20, "offset": 0}),
        ({"limit": "2.7"}, {"limit": 2, "offset": 0}),
        ({"limit": " 7 "}, {"limit": 7, "offset": 0}),
        ({"limit": "1e3"}, {"limit": 100, "offset": 0}),
        ({"limit": "9" * 500}, {"limit": 100, "offset": 0}),
        ({"offset": -3}, {"limit": 20, "offset": 0}),
        ({"offset": "abc"}, {"limit": 20, "offset": 0}),
        ({"offset": "1e3"}, {"limit": 20, "offset": 1000}),
        ({"offset": "-inf"}, {"limit": 20, "offset": 0}),
        ({"offset": "9" * 30}, {"limit": 20, "offset": 2**63 - 1}),
        ({"limit": "x", "offset": "y"}, {"limit": 20, "offset": 0}),
    ],
)
async def test_job_list_clamps_pagination_like_the_system_replaced(stack, query, used):
    reply = await stack.api.get("/api/jobs", params=query)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert page_used(body) == used
    assert len(body["jobs"]) <= used["limit"]


# --- GET /api/jobs/{id} -------------------------------------------------------------------------


async def test_job_detail_shape(stack, llm):
    job_id = await completed_job(stack)

    async def detail():
        body = (await stack.api.get(f"/api/jobs/{job_id}")).json()
        return body if "completed" in [e["status"] for e in body["events"]] else None

    body = await wait_for(detail, what="the completed event")
    assert set(body) == {"job", "events"}
    job = body["job"]
    assert set(job) == {"jobId", "status", "progress", "lastGraph", "created"}
    assert (job["jobId"], job["status"], job["progress"]) == (job_id, "completed", 1.0)
    assert isinstance(job["created"], int)
    assert job["lastGraph"]["workflowId"] == job_id and job["lastGraph"]["schema"] == "langgraph.v1"
    assert [n["id"] for n in job["lastGraph"]["nodes"]] == [
        "script",
        "train_voice",
        "generate_video",
        "postprocess_video",
    ]
    for event in body["events"]:
        assert set(event) == {"eventId", "status", "progress", "data", "created"}
        assert isinstance(event["eventId"], int) and isinstance(event["created"], int)
        assert event["status"] is None or event["status"] in STATUSES
        assert event["progress"] is None or isinstance(event["progress"], (int, float))
    # Newest first by when each event happened; ids are unique, not in that order (the workflow records its own
    # events with its snapshot, the relays the data plane's as they hear them).
    event_ids, times = [e["eventId"] for e in body["events"]], [e["created"] for e in body["events"]]
    assert times == sorted(times, reverse=True) and len(set(event_ids)) == len(event_ids)
    assert body["events"][-1]["status"] == "advertised"


async def test_job_detail_keeps_the_newest_50_events_newest_first(stack, llm):
    job_id = await completed_job(stack)
    for i in range(60):
        await stack.redis.publish(
            BRIDGE.channel("data", job_id),
            json.dumps({"jobId": job_id, "data": f"note-{i}", "created": str(int(time.time() * 1000))}),
        )

    async def all_recorded():
        body = (await stack.api.get(f"/api/jobs/{job_id}")).json()
        return body if body["events"] and body["events"][0]["data"] == "note-59" else None

    events = (await wait_for(all_recorded, what="60 data events to be recorded"))["events"]
    assert len(events) == 50
    assert [e["data"] for e in events] == [f"note-{i}" for i in range(59, 9, -1)]
    assert [e["eventId"] for e in events] == sorted((e["eventId"] for e in events), reverse=True)


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "garbage", "0" * 40])
async def test_job_detail_of_unknown_job_is_404(stack, job_id):
    assert_error(await stack.api.get(f"/api/jobs/{job_id}"), 404)


# --- routing, CORS, body limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path", [("GET", "/nope"), ("GET", "/api"), ("POST", "/api/status/x"), ("DELETE", "/api/jobs")]
)
async def test_unknown_route_or_method_is_a_json_error(stack, method, path):
    reply = await stack.api.request(method, path)
    assert_error(reply, 404 if method == "GET" else 405)


@pytest.mark.parametrize("origin", FRONTEND_ORIGINS)
async def test_cors_allows_the_frontend_origins(stack, origin):
    preflight = await stack.api.options(
        "/api/jobs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

    simple = await stack.api.get("/health", headers={"Origin": origin})
    assert simple.headers["access-control-allow-origin"] == origin
    # The frontend must be able to read error replies too.
    missing = await stack.api.get(f"/api/status/{uuid.uuid4()}", headers={"Origin": origin})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost:3000", "https://localhost:3001"])
async def test_cors_refuses_other_origins(stack, origin):
    preflight = await stack.api.options(
        "/api/jobs", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert_error(preflight, 400)
    assert "access-control-allow-origin" not in preflight.headers
    simple = await stack.api.get("/health", headers={"Origin": origin})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


async def test_body_over_1_mib_is_413(stack):
    big = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x" * (1 << 20)}}}
    assert "limit" in assert_error(await stack.api.post("/api/jobs", json=big), 413)

    async def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(20):
            yield b" " * (100 << 10)

    streamed = await stack.api.post("/api/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_error(streamed, 413)
    # Just under the limit is not refused for its size.
    fits = {"mode": "fixed_graph", "variant": "nope", "params": {"script": {"prompt": "x" * ((1 << 20) - 200)}}}
    assert "unknown variant" in assert_error(await stack.api.post("/api/jobs", json=fits), 400)


# --- /metrics, /openapi.json ----------------------------------------------------------------------


async def test_metrics_are_prometheus_text(stack, llm):
    job_id = await submit(stack, SADTALKER)
    await stack.api.get(f"/api/status/{job_id}")
    await stack.api.get("/no-such-route")

    reply = await stack.api.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    requests = [s for s in families["http_requests"].samples if s.name == "http_requests_total"]
    labels = {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in requests}
    assert ("POST", "/api/jobs", "200") in labels
    assert ("GET", "/api/status/{job_id}", "200") in labels, "routes are labelled by template, not by raw path"
    assert ("GET", "unmatched", "404") in labels
    assert not any(job_id in route for _, route, _ in labels)
    buckets = [s for s in families["http_request_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert any(s.labels["route"] == "/api/jobs" and s.labels["status"] == "200" for s in buckets)
    submitted = [s for s in families["spinbot_jobs_submitted"].samples if s.name == "spinbot_jobs_submitted_total"]
    assert any(s.labels == {"pipeline": "sadtalker"} and s.value >= 1 for s in submitted)
    assert families["spinbot_dead_letters"].type == "counter"
    assert (await outcome(stack, job_id))[0] == "completed"


# The REST contract as OpenAPI must show it: (method, path) -> (success status, response model).
DOCUMENTED = {
    ("get", "/health"): ("200", "Health"),
    ("get", "/ready"): ("200", "Readiness"),
    ("get", "/metrics"): ("200", None),
    ("post", "/api/jobs"): ("200", "AcceptedJob"),
    ("get", "/api/jobs"): ("200", "JobList"),
    ("get", "/api/status/{job_id}"): ("200", "JobStatus"),
    ("get", "/api/jobs/{job_id}"): ("200", "JobWithEvents"),
    ("post", "/api/jobs/{job_id}/cancel"): ("202", "JobControl"),
    ("post", "/api/jobs/{job_id}/retry"): ("200", "AcceptedJob"),
    ("get", "/api/jobs/{job_id}/graph"): ("200", "LiveGraph"),
    ("get", "/api/capabilities"): ("200", "CombinedManifest"),
    ("post", "/api/infinitetalk"): ("200", "AcceptedJob"),
    ("get", "/api/pipelines"): ("200", "PipelineList"),
    ("get", "/api/jobs/{job_id}/artifacts"): ("200", "ArtifactList"),
    ("get", "/api/artifacts/download"): ("200", None),
}


ROUTER_MODULES = (routes_jobs, routes_control, routes_capabilities, routes_uploads, readiness, routes_catalog, metrics)
ROUTERS = [*(module.router for module in ROUTER_MODULES), routes_artifacts.router, routes_artifacts.download_router]


async def _openapi(stack) -> dict:
    reply = await stack.api.get("/openapi.json")
    assert reply.status_code == 200
    return reply.json()


async def test_openapi_lists_every_route_with_its_response_model(stack):
    spec = await _openapi(stack)
    served = {(method, path) for path, item in spec["paths"].items() for method in item}
    routers = [create_app(stack.settings).router, *ROUTERS]
    app_routes = {
        (method.lower(), route.path)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema  # not the /docs and /redoc pages
        for method in route.methods or ()
    }
    assert served == app_routes == set(DOCUMENTED)
    for (method, path), (status, model) in DOCUMENTED.items():
        responses = spec["paths"][path][method]["responses"]
        assert status in responses, (method, path)
        if model:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{model}"}, (method, path)
    accepted = spec["components"]["schemas"]["AcceptedJob"]["properties"]
    assert set(accepted) == {"jobId", "status", "progress", "created"}
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]


async def test_openapi_documents_only_the_error_shape_the_api_sends(stack):
    spec = await _openapi(stack)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


# --- GET /api/capabilities ------------------------------------------------------------------------


async def test_capabilities_from_both_planes_then_from_cache(stack):
    reply = await stack.api.get("/api/capabilities")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    spec = contracts()
    control_ids = [c["id"] for c in spec.capabilities["capabilities"]]
    worker_ids = [c["id"] for c in spec.python_capabilities["capabilities"]]
    assert set(body) == {"generatedAt", "capabilities", "sources"}
    assert body["sources"] == {
        "control": {"plane": "node", "number": len(control_ids)},
        "worker": {"plane": "python", "number": len(worker_ids)},
    }
    assert [c["id"] for c in body["capabilities"]] == control_ids + worker_ids
    assert [c["plane"] for c in body["capabilities"]] == ["node"] * len(control_ids) + ["python"] * len(worker_ids)
    assert {"llm.generate_script", "generate.upscale_video"} <= {c["id"] for c in body["capabilities"]}

    newest = await newest_job_id(stack)
    started = time.monotonic()
    again = await stack.api.get("/api/capabilities")
    assert time.monotonic() - started < 0.5
    assert again.status_code == 200 and again.json() == body
    assert await newest_job_id(stack) == newest, "a cached answer runs no job"


async def test_capabilities_without_a_worker_is_504_in_time(stack):
    async with stack.no_dataplane(), api_replica(stack.settings, stack.temporal) as url:  # a fresh, empty cache
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            started = time.monotonic()
            reply = await client.get("/api/capabilities")
            elapsed = time.monotonic() - started
    message = assert_error(reply, 504)
    assert "info.get_capabilities" in message and "3s" in message
    assert 2.5 <= elapsed <= 3 + 2.5, elapsed


# --- API keys -------------------------------------------------------------------------------------


async def test_api_keys_guard_rest_but_not_health(stack, llm):
    settings = stack.settings.model_copy(update={"api_keys": ["k1"]})
    async with api_replica(settings, stack.temporal) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        routes = [
            ("GET", "/api/jobs", None),
            ("POST", "/api/jobs", SADTALKER),
            ("GET", f"/api/status/{uuid.uuid4()}", None),
            ("GET", f"/api/jobs/{uuid.uuid4()}", None),
            ("POST", f"/api/jobs/{uuid.uuid4()}/cancel", None),
            ("GET", "/metrics", None),
        ]
        for method, path, body in routes:
            for headers in (
                {},
                {"Authorization": "Bearer k2"},
                {"Authorization": "k1"},
                {"Authorization": "Basic k1"},
                {"Authorization": "Bearer"},
            ):
                message = assert_error(await client.request(method, path, json=body, headers=headers), 401)
                assert "API key" in message
        assert (await client.get("/health")).json() == {"status": "ok"}

        good = {"Authorization": "Bearer k1"}
        assert (await client.get("/api/jobs", headers=good)).status_code == 200
        assert (await client.get("/metrics", headers=good)).status_code == 200
        accepted = await client.post("/api/jobs", json=SADTALKER, headers=good)
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["jobId"]
        assert (await client.get(f"/api/status/{job_id}", headers=good)).status_code == 200
    assert (await outcome(stack, job_id))[0] == "completed"
