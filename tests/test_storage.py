"""Both object stores behave alike (MinIO against moto's S3 server, and a local folder); upload_artifact on each."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import uuid

import httpx
import pytest
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError

from activities.artifacts import upload_artifact
from activities.resources import Resources
from core.contracts import contracts
from core.minio_store import MinioStore
from core.settings import Settings
from core.storage import (
    InvalidObjectName,
    LocalStore,
    ObjectNotFound,
    StorageError,
    object_store,
)
from workflows.inputs import NodeTask


def settings_for(kind: str, s3_endpoint: str, tmp_path) -> Settings:
    if kind == "minio":
        return Settings.model_validate({"MINIO_ENDPOINT": s3_endpoint, "artifacts_dir": tmp_path})
    return Settings(artifacts_dir=tmp_path / "objects")


@pytest.fixture(params=["minio", "local"])
def storage(request, tmp_path):
    if request.param == "minio":
        return object_store(settings_for("minio", request.getfixturevalue("s3_endpoint"), tmp_path))
    return object_store(settings_for("local", "", tmp_path))


@pytest.fixture
def bucket() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def test_put_creates_the_bucket_and_round_trips(storage, bucket):
    result = await storage.put(bucket, "jobs/j1/clip.txt", b"hello", 5, "text/plain")

    assert {k: result[k] for k in ("bucket", "key", "size_bytes", "content_type")} == {
        "bucket": bucket,
        "key": "jobs/j1/clip.txt",
        "size_bytes": 5,
        "content_type": "text/plain",
    }
    assert result["created_at"].endswith("Z")
    assert await storage.exists(bucket, "jobs/j1/clip.txt")
    assert await storage.get(bucket, "jobs/j1/clip.txt") == b"hello"


async def test_put_reads_a_stream_of_the_given_length(storage, bucket):
    payload = bytes(range(256)) * 5000  # bigger than one copy chunk

    await storage.put(bucket, "big.bin", io.BytesIO(payload), len(payload), "application/octet-stream")

    assert await storage.get(bucket, "big.bin") == payload


async def test_put_overwrites(storage, bucket):
    await storage.put(bucket, "a.txt", b"one", 3, "text/plain")
    await storage.put(bucket, "a.txt", b"second", 6, "text/plain")

    assert await storage.get(bucket, "a.txt") == b"second"


async def test_remove_and_missing_objects(storage, bucket):
    await storage.ensure_bucket(bucket)
    await storage.ensure_bucket(bucket)  # idempotent
    await storage.put(bucket, "gone.txt", b"x", 1, "text/plain")

    await storage.remove(bucket, "gone.txt")
    await storage.remove(bucket, "gone.txt")  # removing twice is fine
    await storage.remove(f"{bucket}-none", "gone.txt")

    assert not await storage.exists(bucket, "gone.txt")
    assert not await storage.exists(f"{bucket}-none", "gone.txt")
    for missing_bucket in (bucket, f"{bucket}-none"):
        with pytest.raises(ObjectNotFound):
            await storage.get(missing_bucket, "gone.txt")


@pytest.mark.parametrize(
    "key", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "a//b", "./a", "a/.", "", "a\\b"]
)
async def test_keys_that_could_escape_are_refused(storage, bucket, key):
    with pytest.raises(InvalidObjectName):
        await storage.put(bucket, key, b"x", 1, "text/plain")
    with pytest.raises(InvalidObjectName):
        await storage.get(bucket, key)


@pytest.mark.parametrize("bad_bucket", ["Upper", "ab", "under_score", "a..b", "../up", ""])
async def test_bad_bucket_names_are_refused(storage, bad_bucket):
    with pytest.raises(InvalidObjectName):
        await storage.put(bad_bucket, "k.txt", b"x", 1, "text/plain")


async def test_length_must_match_the_bytes(storage, bucket):
    with pytest.raises(StorageError) as caught:
        await storage.put(bucket, "k.txt", b"abc", 5, "text/plain")
    assert not caught.value.retryable


async def test_minio_endpoint_may_be_a_url(s3_endpoint, bucket):
    store = MinioStore(f"http://{s3_endpoint}", "minioadmin", "minioadmin")

    await store.put(bucket, "u.txt", b"url form", 8, "text/plain")

    assert await MinioStore(s3_endpoint, "minioadmin", "minioadmin").get(bucket, "u.txt") == b"url form"


@pytest.mark.parametrize("endpoint", ["ftp://h:21", "http://h:9000/some/path", "http://"])
def test_minio_endpoint_that_is_no_host_is_refused(endpoint):
    with pytest.raises(StorageError) as caught:
        MinioStore(endpoint, "a", "b")
    assert not caught.value.retryable


async def test_local_store_lays_objects_out_under_its_root(tmp_path, bucket):
    store = LocalStore(tmp_path)

    await store.put(bucket, "jobs/j/a.txt", b"abc", 3, "text/plain")

    assert (tmp_path / bucket / "jobs" / "j" / "a.txt").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / bucket / "jobs" / "j").iterdir()] == ["a.txt"]  # no partial files left


async def test_local_store_refuses_a_symlink_out_of_its_root(tmp_path, bucket):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root" / bucket).mkdir(parents=True)
    (tmp_path / "root" / bucket / "link").symlink_to(outside)

    with pytest.raises(InvalidObjectName):
        await LocalStore(tmp_path / "root").put(bucket, "link/x.txt", b"x", 1, "text/plain")
    assert not any(outside.iterdir())


def test_object_store_follows_settings(tmp_path):
    assert isinstance(object_store(Settings.model_validate({"MINIO_ENDPOINT": "127.0.0.1:9000"})), MinioStore)
    local = object_store(Settings(artifacts_dir=tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path


def test_only_a_process_configured_for_minio_loads_the_s3_client(tmp_path):
    """The S3 client and what it brings (~6 MB a process) load only with MINIO_ENDPOINT set: every role of the dev
    stack, which keeps objects in a folder, stays without it (the API's memory goal, issue 11)."""
    script = f"""
import sys
import api.app, activities.registry, handoff.service, spinbot.cli
from core.settings import Settings
from core.storage import object_store
object_store(Settings(artifacts_dir={str(tmp_path)!r}))
print(sorted(name for name in sys.modules if name.split(".")[0] in ("minio", "Crypto", "argon2")))
object_store(Settings.model_validate({{"MINIO_ENDPOINT": "127.0.0.1:9000"}}))
print("minio" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.splitlines() == ["[]", "True"], run.stdout + run.stderr


# --- artifacts.upload_artifact ---------------------------------------------------------------------------------


@pytest.fixture
async def make_resources():
    # upload_artifact touches neither Redis nor HTTP; the clients are only there to complete Resources.
    async with httpx.AsyncClient() as http:
        redis = aioredis.Redis()
        yield lambda settings: Resources(settings, contracts(), redis, http)
        await redis.aclose()


def upload_task(job_id: str, params: dict) -> NodeTask:
    return NodeTask(
        job_id=job_id,
        node_id="upload",
        service="artifacts.upload_artifact",
        params=params,
        input={},
        progress_start=0.5,
        progress_end=0.6,
    )


@pytest.mark.parametrize("kind", ["minio", "local"])
async def test_upload_artifact_stores_every_file_under_the_job(kind, request, tmp_path, make_resources, job_id, bucket):
    s3_endpoint = request.getfixturevalue("s3_endpoint") if kind == "minio" else ""
    res = make_resources(settings_for(kind, s3_endpoint, tmp_path))
    png = b"\x89PNG\r\n\x1a\n fake"
    params = {
        "bucket": bucket,
        "files": [
            {"name": "script.txt", "text": "Hello, world"},
            {"name": "frame.png", "base64": base64.b64encode(png).decode()},
            {"name": "data.bin", "contentType": "application/x-custom", "base64": base64.b64encode(b"\0\1").decode()},
        ],
    }

    out = await upload_artifact(upload_task(job_id, params), res)

    artifact_id = str(uuid.UUID(out["artifactId"]))
    assert (out["bucket"], out["currentProgress"]) == (bucket, 0.6)
    assert set(out["objects"]) == {"script.txt", "frame.png", "data.bin"}
    for name, content, content_type in [
        ("script.txt", b"Hello, world", "text/plain"),
        ("frame.png", png, "image/png"),
        ("data.bin", b"\0\1", "application/x-custom"),
    ]:
        obj = out["objects"][name]
        assert obj["key"] == f"jobs/{job_id}/{artifact_id}/{name}"
        assert (obj["bucket"], obj["size_bytes"], obj["content_type"]) == (bucket, len(content), content_type)
        assert await res.storage.get(bucket, obj["key"]) == content
    assert isinstance(res.storage, MinioStore if kind == "minio" else LocalStore)


async def test_upload_artifact_defaults_to_the_artifacts_bucket(tmp_path, make_resources, job_id):
    res = make_resources(settings_for("local", "", tmp_path))

    out = await upload_artifact(upload_task(job_id, {"files": [{"name": "n.txt", "text": "x"}]}), res)

    assert out["bucket"] == "artifacts"
    assert await res.storage.exists("artifacts", out["objects"]["n.txt"]["key"])


@pytest.mark.parametrize(
    "params, named",
    [
        ({}, "files"),
        ({"files": []}, "files"),
        ({"files": "a.txt"}, "files"),
        ({"files": ["a.txt"]}, "files/0: must be an object"),
        ({"files": [{"text": "x"}]}, "files/0/name"),
        ({"files": [{"name": "", "text": "x"}]}, "files/0/name"),
        ({"files": [{"name": "..", "text": "x"}]}, "files/0/name"),
        ({"files": [{"name": "a/b.txt", "text": "x"}]}, "files/0/name"),
        ({"files": [{"name": "a\\b.txt", "text": "x"}]}, "files/0/name"),
        ({"files": [{"name": "a.txt"}]}, "files/0: give exactly one of"),
        ({"files": [{"name": "a.txt", "text": "x", "base64": "eA=="}]}, "files/0: give exactly one of"),
        ({"files": [{"name": "a.txt", "text": 5}]}, "files/0/text"),
        ({"files": [{"name": "a.bin", "base64": "not base64!"}]}, "files/0/base64"),
        ({"files": [{"name": "a.txt", "text": "x", "contentType": 3}]}, "files/0/contentType"),
        ({"files": [{"name": "a.txt", "text": "x"}, {"name": "a.txt", "text": "y"}]}, "repeated: a.txt"),
        ({"bucket": "Not_A_Bucket", "files": [{"name": "a.txt", "text": "x"}]}, "bucket 'Not_A_Bucket'"),
        ({"bucket": 7, "files": [{"name": "a.txt", "text": "x"}]}, "bucket 7"),
    ],
)
async def test_upload_artifact_bad_params(tmp_path, make_resources, job_id, params, named):
    res = make_resources(settings_for("local", "", tmp_path))

    with pytest.raises(ApplicationError) as caught:
        await upload_artifact(upload_task(job_id, params), res)

    assert (caught.value.type, caught.value.non_retryable) == ("InvalidParams", True)
    assert named in caught.value.message
    assert not (tmp_path / "objects").exists()


async def test_upload_artifact_store_failure_is_retryable(tmp_path, make_resources, job_id):
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the store's root should be")
    res = make_resources(Settings(artifacts_dir=root))

    with pytest.raises(ApplicationError) as caught:
        await upload_artifact(upload_task(job_id, {"files": [{"name": "a.txt", "text": "x"}]}), res)

    assert (caught.value.type, caught.value.non_retryable) == ("StorageFailed", False)
