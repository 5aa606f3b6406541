"""Property tests against the live API: whatever a client sends, never a 5xx, and every error is {"error": <string>}.

Hypothesis drives a synchronous httpx client from a worker thread, so the event loop stays free to serve.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio import Minio

from tests.media import png_bytes, wav_bytes

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
node_ids = st.sampled_from(["script", "train_voice", "generate_video", "postprocess_video", "a", "b", ""]) | st.text(
    max_size=4
)
node = st.fixed_dictionaries(
    {
        "id": node_ids,
        "service": st.sampled_from(
            ["llm.generate_script", "dummy.dummy_task", "generate.f5_to_tts", "info.get_capabilities", "x.y"]
        ),
        "plane": st.sampled_from(["node", "python", "gpu"]),
    },
    optional={
        "status": st.sampled_from(["pending", "ready", "running", "completed", "failed", "skipped", "nope"]),
        "params": json_values,
        "input": json_values,
        "output": json_values,
        "error": json_values,
        "progressWeight": json_values,
        "retries": json_values,
        "tags": json_values,
        "name": json_values,
    },
)
edge = st.fixed_dictionaries(
    {"from": node_ids, "to": node_ids},
    optional={"kind": st.sampled_from(["normal", "on_success", "on_failure", "x"]), "metadata": json_values},
)
graph = st.fixed_dictionaries(
    {"nodes": st.lists(node, max_size=4), "edges": st.lists(edge, max_size=4)},
    optional={
        "schema": st.sampled_from(["langgraph.v1", "v0"]),
        "workflowId": json_values,
        "context": json_values,
        "metadata": json_values,
    },
)
fixed_graph = st.fixed_dictionaries(
    {
        "mode": st.just("fixed_graph"),
        "variant": st.sampled_from(["sadtalker", "svd_wav2lip", "f5tts_infinitetalk", "nope"]) | json_values,
    },
    optional={
        "params": st.dictionaries(
            node_ids, st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values, max_size=3
        )
        | json_values
    },
)
# A graph may also come as a JSON string, which the planner decodes.
process_graph = st.fixed_dictionaries(
    {"mode": st.just("process_graph"), "graph": graph | graph.map(json.dumps) | json_values}
)
planning_requests = (
    fixed_graph
    | process_graph
    | json_values
    | st.dictionaries(st.sampled_from(["mode", "variant", "graph", "params"]), json_values)
)
# h11 refuses to send a header value with surrounding spaces, so none are generated.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=210).filter(
    lambda value: value == value.strip()
)
path_text = st.text(max_size=60) | st.uuids().map(str) | st.sampled_from(["", ".", "..", "%", "?x=1", "a/b", "\x00"])


def check_reply(reply: httpx.Response, accepted: list[str] | None = None) -> None:
    """Never a 5xx; errors are JSON {"error": str}; a 2xx is JSON; a 3xx says where to go."""
    where = f"{reply.request.method} {reply.request.url}"
    assert reply.status_code < 500, f"{where} -> {reply.status_code} {reply.text[:300]}"
    if reply.status_code >= 400:
        body = reply.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
            f"{where}: {reply.text[:300]}"
        )
    elif reply.status_code >= 300:
        assert "location" in reply.headers, where
    else:
        reply.json()
        if accepted is not None and reply.request.method == "POST" and "jobId" in reply.json():
            accepted.append(reply.json()["jobId"])


async def fuzz(stack, body) -> list[str]:
    """Run `body(client, accepted)` in a thread against the live API; then cancel every job it started."""
    accepted: list[str] = []

    def run():
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            body(client, accepted)

    await asyncio.to_thread(run)
    for job_id in set(accepted):
        assert (await stack.api.post(f"/api/jobs/{job_id}/cancel")).status_code in (202, 409)
    return accepted


async def test_post_jobs_with_any_json(stack, llm):
    @FUZZ
    @given(request=planning_requests, key=st.none() | header_text)
    def post_any(client, accepted, request, key):
        headers = {"content-type": "application/json", **({"Idempotency-Key": key} if key is not None else {})}
        check_reply(client.post("/api/jobs", content=json.dumps(request), headers=headers), accepted)

    await fuzz(stack, lambda client, accepted: post_any(client, accepted))


async def test_post_jobs_with_any_bytes(stack):
    @FUZZ
    @given(
        body=st.binary(max_size=200) | st.text(max_size=100).map(str.encode),
        content_type=st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "multipart/form-data; boundary=x",
                "",
            ]
        ),
    )
    def post_bytes(client, accepted, body, content_type):
        check_reply(client.post("/api/jobs", content=body, headers={"content-type": content_type}), accepted)

    await fuzz(stack, lambda client, accepted: post_bytes(client, accepted))


async def test_job_paths_with_any_id(stack):
    @FUZZ
    @given(
        job_id=path_text,
        route=st.sampled_from(
            [
                ("GET", "/api/status/{}"),
                ("GET", "/api/jobs/{}"),
                ("GET", "/api/jobs/{}/graph"),
                ("POST", "/api/jobs/{}/cancel"),
                ("POST", "/api/jobs/{}/retry"),
            ]
        ),
    )
    def any_id(client, accepted, job_id, route):
        method, template = route
        check_reply(client.request(method, template.format(quote(job_id, safe=""))), accepted)

    assert await fuzz(stack, lambda client, accepted: any_id(client, accepted)) == []


async def test_job_list_with_any_pagination(stack):
    numbers = st.integers(min_value=-(10**30), max_value=10**30).map(str)

    @FUZZ
    @given(limit=st.none() | numbers | st.text(max_size=12), offset=st.none() | numbers | st.text(max_size=12))
    def any_page(client, accepted, limit, offset):
        params = {name: value for name, value in (("limit", limit), ("offset", offset)) if value is not None}
        reply = client.get("/api/jobs", params=params)
        check_reply(reply)
        if reply.status_code == 200:
            body = reply.json()
            assert 1 <= body["pagination"]["limit"] <= 100 and body["pagination"]["offset"] >= 0
            assert len(body["jobs"]) <= body["pagination"]["limit"]

    await fuzz(stack, lambda client, accepted: any_page(client, accepted))


async def test_infinitetalk_with_any_parts(stack, llm, s3_endpoint):
    bucket = Minio(s3_endpoint, access_key="any", secret_key="any", secure=False)

    def stored() -> int:
        return sum(1 for _ in bucket.list_objects("input", recursive=True)) if bucket.bucket_exists("input") else 0

    files = st.sampled_from([png_bytes(), wav_bytes(), b"", b"plain text", b"RIFF\x00\x00\x00\x00WAVE"]) | st.binary(
        max_size=64
    )
    names = st.sampled_from(["a.png", "b.wav", "../c.png", "d/e.wav", ".x", "ok name (1).png"]) | st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=12
    )
    types = st.sampled_from(["image/png", "audio/wav", "application/octet-stream", "text/plain", ""])
    part = st.none() | st.tuples(names, files, types)
    data = st.none() | st.text(max_size=40) | st.builds(json.dumps, json_values) | st.just('{"prompt": "p"}')

    @settings(FUZZ, max_examples=80)
    @given(image=part, audio=part, data=data)
    def post_parts(client, accepted, image, audio, data):
        before = stored()
        parts = {name: value for name, value in (("image_file", image), ("audio_file", audio)) if value is not None}
        reply = client.post(
            "/api/infinitetalk",
            files=parts or {"other": ("x", b"x", "text/plain")},
            data={} if data is None else {"data": data},
        )
        check_reply(reply, accepted)
        if reply.status_code != 200:
            assert stored() == before, f"a refused upload left objects behind: {reply.text}"

    await fuzz(stack, lambda client, accepted: post_parts(client, accepted))


# --- what the fuzzing found ---------------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_number_in_params_is_a_400(stack, token):
    body = f'{{"mode": "fixed_graph", "variant": "sadtalker", "params": {{"script": {{"prompt": "p", "x": {token}}}}}}}'
    reply = await stack.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and set(reply.json()) == {"error"}, reply.text


async def test_nul_character_in_params_is_a_400(stack):
    request = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "p\u0000q"}}}
    reply = await stack.api.post("/api/jobs", json=request)
    assert reply.status_code == 400 and set(reply.json()) == {"error"}, reply.text
