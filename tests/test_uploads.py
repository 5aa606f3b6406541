"""POST /api/infinitetalk: two real files to bucket `input`, an f5tts_infinitetalk job, and nothing left on refusal."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from minio import Minio

from tests.e2e import outcome
from tests.media import png_bytes, wav_bytes

pytestmark = pytest.mark.timeout(60)

BUCKET = "input"
PNG, WAV = png_bytes(), wav_bytes()
DATA = json.dumps({"prompt": "a lighthouse keeper's last night", "refText": "hello there"})
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
OVER_LIMIT = PNG + b"\x00" * (1 << 20)  # a PNG signature, then past the 1 MiB upload limit


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> Minio:
    return Minio(s3_endpoint, access_key="any", secret_key="any", secure=False)


async def object_keys(client: Minio) -> set[str]:
    def listing():
        if not client.bucket_exists(BUCKET):
            return set()
        return {obj.object_name for obj in client.list_objects(BUCKET, recursive=True)}

    return await asyncio.to_thread(listing)


async def read_object(client: Minio, key: str) -> bytes:
    def read():
        response = client.get_object(BUCKET, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return await asyncio.to_thread(read)


def parts(image=("face.png", PNG, "image/png"), audio=("voice.wav", WAV, "audio/wav"), data=DATA):
    """httpx `files` and `data` for a submission; pass None to leave a part out."""
    files = {name: part for name, part in (("image_file", image), ("audio_file", audio)) if part is not None}
    return {"files": files, "data": {} if data is None else {"data": data}}


async def post(stack, headers=None, **kwargs):
    return await stack.api.post("/api/infinitetalk", headers=headers or {}, **parts(**kwargs))


async def test_upload_plans_and_completes_an_infinitetalk_job(stack, llm, bucket):
    before = await object_keys(bucket)
    reply = await post(stack)

    assert reply.status_code == 200, reply.text
    accepted = reply.json()
    assert set(accepted) == {"jobId", "status", "progress", "created"}
    assert (accepted["status"], accepted["progress"]) == ("advertised", 0) and accepted["created"].isdigit()
    job_id = accepted["jobId"]

    new = await object_keys(bucket) - before
    images = [k for k in new if re.fullmatch(f"images/{UUID}\\.png", k)]
    audio = [k for k in new if re.fullmatch(f"audio/{UUID}\\.wav", k)]
    assert len(images) == 1 and len(audio) == 1 and len(new) == 2, new
    assert await read_object(bucket, images[0]) == PNG
    assert await read_object(bucket, audio[0]) == WAV

    graph = (await stack.api.get(f"/api/jobs/{job_id}")).json()["job"]["lastGraph"]
    assert graph["context"]["pipeline"] == "f5tts_infinitetalk"
    params = {node["id"]: node.get("params") for node in graph["nodes"]}
    settings = stack.settings
    assert set(params["script"]) == {
        "prompt",
        "tone",
        "length",
        "persona",
        "model",
        "temperature",
        "endpoint",
        "timeoutMs",
    }
    assert params["script"]["prompt"] == "a lighthouse keeper's last night"
    assert (
        params["script"]["model"],
        params["script"]["temperature"],
        params["script"]["endpoint"],
        params["script"]["timeoutMs"],
    ) == (settings.llm_model, settings.llm_temperature, settings.llm_endpoint, settings.llm_timeout_ms)
    assert all(
        isinstance(params["script"][key], str) and params["script"][key] for key in ("tone", "length", "persona")
    )
    assert params["f5_to_tts"] == {"audioPath": f"input/{audio[0]}", "refText": "hello there"}
    assert params["infinite_talk"] == {"imagePath": f"input/{images[0]}"}

    assert await outcome(stack, job_id) == ("completed", None)
    job = (await stack.api.get(f"/api/jobs/{job_id}")).json()["job"]
    upscale = next(node for node in job["lastGraph"]["nodes"] if node["id"] == "upscale_video")
    artifact = upscale["output"]["videoArtifact"]
    assert set(artifact) == {"bucket", "key", "size_bytes", "created_at", "content_type"}
    assert isinstance(artifact["bucket"], str) and isinstance(artifact["key"], str) and artifact["key"]
    assert isinstance(artifact["size_bytes"], int) and artifact["content_type"] == "video/mp4"
    assert any("a lighthouse keeper" in request.get("prompt", "") for request in llm.requests)


@pytest.mark.parametrize(
    "case, submission, status, named",
    [
        ("no-image", {"image": None}, 400, "image_file"),
        ("no-audio", {"audio": None}, 400, "audio_file"),
        ("no-data", {"data": None}, 400, "data"),
        ("data-not-json", {"data": "{prompt: x"}, 400, "data: not valid JSON"),
        ("data-not-object", {"data": '["x"]'}, 400, "data"),
        ("data-without-prompt", {"data": json.dumps({"refText": "x"})}, 400, "data.prompt"),
        ("data-blank-prompt", {"data": json.dumps({"prompt": "  "})}, 400, "data.prompt"),
        ("refText-not-string", {"data": json.dumps({"prompt": "x", "refText": 5})}, 400, "data.refText"),
        ("image-over-limit", {"image": ("face.png", OVER_LIMIT, "image/png")}, 413, "image_file"),
        ("audio-over-limit", {"audio": ("voice.wav", WAV + b"\x00" * (1 << 20), "audio/wav")}, 413, "audio_file"),
        ("text-as-image", {"image": ("notes.txt", b"just some words\n", "text/plain")}, 415, "image_file"),
        ("text-bytes-called-png", {"image": ("face.png", b"just some words\n", "image/png")}, 415, "image_file"),
        ("png-as-audio", {"audio": ("voice.wav", PNG, "audio/wav")}, 415, "audio_file"),
        ("png-as-octet-stream-audio", {"audio": ("voice.wav", PNG, "application/octet-stream")}, 415, "audio_file"),
        ("empty-image", {"image": ("face.png", b"", "image/png")}, 400, "image_file"),
        ("dotdot-name", {"image": ("../x.png", PNG, "image/png")}, 400, "image_file: unsafe"),
        ("slash-name", {"image": ("a/b.png", PNG, "image/png")}, 400, "image_file: unsafe"),
        ("backslash-name", {"audio": ("a\\b.wav", WAV, "audio/wav")}, 400, "audio_file: unsafe"),
        ("empty-name", {"image": ("", PNG, "image/png")}, 400, "image_file"),
        ("hidden-name", {"audio": (".wav", WAV, "audio/wav")}, 400, "audio_file: unsafe"),
    ],
)
async def test_refused_upload_leaves_nothing_behind(stack, bucket, case, submission, status, named):
    before = await object_keys(bucket)
    newest = (await stack.api.get("/api/jobs", params={"limit": 1})).json()["jobs"][:1]

    reply = await post(stack, **submission)

    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and named in body["error"], body
    assert await object_keys(bucket) == before
    assert (await stack.api.get("/api/jobs", params={"limit": 1})).json()["jobs"][:1] == newest


async def test_request_over_the_upload_body_limit_is_413(stack, bucket):
    before = await object_keys(bucket)
    huge = PNG + b"\x00" * (3 << 20)  # past two files' limit plus framing
    reply = await post(stack, image=("face.png", huge, "image/png"))
    assert reply.status_code == 413 and set(reply.json()) == {"error"}
    assert await object_keys(bucket) == before


async def test_idempotency_key_uploads_once(stack, llm, bucket):
    key = f"upload-{uuid.uuid4()}"
    before = await object_keys(bucket)

    first = await post(stack, headers={"Idempotency-Key": key})
    second = await post(stack, headers={"Idempotency-Key": key})

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(await object_keys(bucket) - before) == 2
    other = await post(stack, headers={"Idempotency-Key": f"{key}-other"})
    assert other.json()["jobId"] != first.json()["jobId"]
    for job_id in (first.json()["jobId"], other.json()["jobId"]):
        assert (await outcome(stack, job_id))[0] == "completed"


async def test_concurrent_retries_with_one_idempotency_key_upload_once(stack, llm, bucket):
    key = f"upload-{uuid.uuid4()}"
    before = await object_keys(bucket)

    replies = await asyncio.gather(*(post(stack, headers={"Idempotency-Key": key}) for _ in range(4)))

    assert {r.status_code for r in replies} == {200}
    job_ids = {r.json()["jobId"] for r in replies}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    assert (await outcome(stack, job_id))[0] == "completed"
    graph = (await stack.api.get(f"/api/jobs/{job_id}")).json()["job"]["lastGraph"]
    params = {node["id"]: node.get("params") or {} for node in graph["nodes"]}
    referenced = {params["f5_to_tts"]["audioPath"], params["infinite_talk"]["imagePath"]}
    stored = {f"{BUCKET}/{key}" for key in await object_keys(bucket) - before}
    assert stored == referenced, f"{len(stored)} objects stored for one job, {len(stored - referenced)} orphaned"
