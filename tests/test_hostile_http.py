"""Hostile submissions at the HTTP door (issue 8): lone surrogates, params of the wrong type, preset node
statuses, a caller-chosen LLM URL. Each is a 400 naming where, leaves no job behind, and a job submitted
right after still completes, seen by a WebSocket client."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.e2e import outcome, submit
from tests.media import png_bytes, wav_bytes
from tests.ws_clients import ws_client

pytestmark = pytest.mark.timeout(90)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "still works"}}}


def sadtalker(**script) -> str:
    return json.dumps({"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": script}})


def caller_graph(*nodes: dict) -> str:
    ids = [node["id"] for node in nodes]
    edges = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    return json.dumps({"mode": "process_graph", "graph": {"nodes": list(nodes), "edges": edges}})


def dummy(node_id: str, **fields) -> dict:
    return {"id": node_id, "service": "dummy.dummy_task", "plane": "python", **fields}


# JSON text as a client would send it: "\ud800" escapes are legal JSON but not valid Unicode.
HOSTILE = {
    "surrogates": [
        (r'{"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "a\ud800"}}}', "prompt"),
        (r'{"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "p", "\udfff": 1}}}', "key"),
        (r'{"mode": "fixed_graph", "variant": "\udc00"}', "variant"),
        (
            r'{"mode": "process_graph", "graph": {"nodes": [{"id": "\ud83d", "service": "dummy.dummy_task",'
            r' "plane": "python"}], "edges": []}}',
            "nodes/0/id",
        ),
        # Doubly escaped: only the planner's decoding of the graph string reveals it.
        (
            r'{"mode": "process_graph", "graph": "{\"nodes\": [{\"id\": \"a\", \"service\": \"dummy.dummy_task\",'
            r' \"plane\": \"python\", \"name\": \"\\ud800\"}], \"edges\": []}"}',
            "nodes/0/name",
        ),
    ],
    "params": [
        (sadtalker(), 'node "script": params.prompt'),
        (sadtalker(prompt=""), 'node "script": params.prompt'),
        (sadtalker(prompt="   "), 'node "script": params.prompt'),
        (sadtalker(prompt=["a"]), 'node "script": params.prompt'),
        (sadtalker(prompt="p", temperature="hot"), 'node "script": params.temperature'),
        (sadtalker(prompt="p", temperature=-1), 'node "script": params.temperature'),
        (sadtalker(prompt="p", timeoutMs=-1), 'node "script": params.timeoutMs'),
        (sadtalker(prompt="p", timeoutMs="1s"), 'node "script": params.timeoutMs'),
        (sadtalker(prompt="p", model=""), 'node "script": params.model'),
        (caller_graph(dummy("a", params={"preset": 3})), 'node "a": params.preset'),
    ],
    "statuses": [
        (caller_graph(dummy("a", status="completed"), dummy("b", status="completed")), 'node "a": status'),
        (caller_graph(dummy("a"), dummy("b", status="running")), 'node "b": status'),
        (caller_graph(dummy("a", status="failed")), 'node "a": status'),
        (caller_graph(dummy("a", status="skipped")), 'node "a": status'),
    ],
    "endpoint": [
        (sadtalker(prompt="p", endpoint="file:///etc/passwd"), "params.endpoint"),
        (sadtalker(prompt="p", endpoint="http://169.254.169.254/latest/meta-data/"), "params.endpoint"),
        (sadtalker(prompt="p", endpoint="http://127.0.0.1:6379"), "params.endpoint"),
        (sadtalker(prompt="p", endpoint="http://localhost:11434@evil.example"), "params.endpoint"),
        (
            caller_graph(
                {
                    "id": "s",
                    "service": "llm.generate_script",
                    "plane": "node",
                    "params": {"prompt": "p", "endpoint": "http://10.1.2.3:11434"},
                }
            ),
            "params.endpoint",
        ),
    ],
}


async def completes_and_is_seen(stack) -> None:
    """A normal job submitted now completes, and a WebSocket client is told."""
    async with ws_client(stack.api_url) as client:
        job_id = await submit(stack, SADTALKER)
        await client.subscribe(job_id)
        updates = await client.updates_until(job_id, "completed", timeout=30)
    assert updates[-1]["progress"] == 1


async def test_a_job_id_spelt_otherwise_is_an_unknown_job(stack, llm):
    """Before, `GET /api/status` and `GET /api/jobs/{id}` found a job by its id in upper case (PostgreSQL compares
    UUIDs), while cancelling it so answered 409 and a WebSocket subscription so heard none of its updates."""
    job_id = await submit(stack, SADTALKER)
    assert (await stack.api.get(f"/api/status/{job_id}")).status_code == 200
    for spelling in (job_id.upper(), "{" + job_id + "}", "urn:uuid:" + job_id, job_id.replace("-", "")):
        for path in (f"/api/status/{spelling}", f"/api/jobs/{spelling}"):
            reply = await stack.api.get(path)
            assert reply.status_code == 404 and set(reply.json()) == {"error"}, (path, reply.text)
    assert (await stack.api.post(f"/api/jobs/{job_id.upper()}/cancel")).status_code == 404
    assert await outcome(stack, job_id) == ("completed", None)  # its script's LLM call made before the next test


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_submissions_are_400s_and_the_next_job_completes(stack, llm, kind):
    for body, where in HOSTILE[kind]:
        llm_calls = len(llm.requests)
        reply = await stack.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, (body, reply.status_code, reply.text)
        assert set(reply.json()) == {"error"} and where in reply.json()["error"], (body, reply.text)
        assert len(llm.requests) == llm_calls  # nothing ran
    await completes_and_is_seen(stack)


async def newest_job_ids(stack) -> list[str]:
    return [job["jobId"] for job in (await stack.api.get("/api/jobs", params={"limit": 3})).json()["jobs"]]


async def test_a_refused_graph_leaves_no_job(stack, llm):
    before = await newest_job_ids(stack)
    body = caller_graph(dummy("a", status="completed"), dummy("b", status="completed"))
    assert (
        await stack.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    ).status_code == 400
    assert await newest_job_ids(stack) == before


async def test_infinitetalk_with_a_surrogate_in_its_data_is_a_400(stack, llm):
    data = r'{"prompt": "hello \ud800 there", "refText": "ok"}'
    files = {
        "image_file": ("face.png", png_bytes(), "image/png"),
        "audio_file": ("voice.wav", wav_bytes(), "audio/wav"),
    }
    reply = await stack.api.post("/api/infinitetalk", files=files, data={"data": data})
    assert reply.status_code == 400, reply.text
    assert "surrogate" in reply.json()["error"] and "prompt" in reply.json()["error"]
    await completes_and_is_seen(stack)


@pytest.mark.parametrize(
    "data, error",
    [("[" * 3000 + "]" * 3000, "nested too deeply"), ('{"prompt": "x", "a": ' + "1" * 10_000 + "}", "not valid JSON")],
    ids=["nested 3000 deep", "an integer of 10,000 digits"],
)
async def test_infinitetalk_with_data_python_cannot_load_is_a_400(stack, llm, data, error):
    """Before: 500 (RecursionError; ValueError past 4,300 digits), and the connection closed under the client."""
    files = {
        "image_file": ("face.png", png_bytes(), "image/png"),
        "audio_file": ("voice.wav", wav_bytes(), "audio/wav"),
    }
    reply = await stack.api.post("/api/infinitetalk", files=files, data={"data": data})
    assert reply.status_code == 400, reply.text
    assert error in reply.json()["error"]
    await completes_and_is_seen(stack)


async def test_settings_endpoint_named_explicitly_is_allowed(stack, llm):
    # PROTOCOL §5: the infinitetalk path puts the settings' endpoint into params; that value is fine.
    body = sadtalker(prompt="p", endpoint=stack.settings.llm_endpoint + "/")
    reply = await stack.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert await outcome(stack, reply.json()["jobId"]) == ("completed", None)
