"""GET /api/jobs/{id}/artifacts: short-lived links for output objects, presigned (S3) or signed by the API (folder)."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from api.routes_artifacts import output_artifacts
from core.signed_urls import DOWNLOAD_PATH, DownloadSigner
from core.storage import object_store
from tests.e2e import outcome, submit
from tests.stack import api_replica

pytestmark = pytest.mark.timeout(60)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x"}}}
SECRET = "artifact-test-secret"


@pytest.fixture(scope="module")
async def finished_job(stack):
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    return job_id


def by_node(body: dict) -> dict[str, dict]:
    return {a["nodeId"]: a for a in body["artifacts"]}


async def test_lists_output_objects_with_a_presigned_link_once_they_are_in_storage(stack, finished_job):
    reply = await stack.api.get(f"/api/jobs/{finished_job}/artifacts")
    assert reply.status_code == 200, reply.text
    listed = by_node(reply.json())
    assert set(listed) == {"train_voice", "generate_video", "postprocess_video"}
    final = listed["postprocess_video"]
    assert (final["name"], final["bucket"], final["key"]) == (
        "artifact",
        "output",
        f"jobs/{finished_job}/postprocess_video.bin",
    )
    assert final["url"] is None and final["expiresAt"] is None  # simulated: nothing in storage yet

    storage = object_store(stack.settings)
    await storage.put("output", final["key"], b"the final video", 15, "video/mp4")
    listed = by_node((await stack.api.get(f"/api/jobs/{finished_job}/artifacts")).json())
    final = listed["postprocess_video"]
    assert final["url"].startswith(f"http://{stack.settings.minio_endpoint}/output/jobs/")
    assert "X-Amz-Signature=" in final["url"] and re.search(r"X-Amz-Expires=(89\d|900)&", final["url"])
    assert abs(final["expiresAt"] - (time.time() + 900) * 1000) < 60_000
    assert listed["train_voice"]["url"] is None
    async with httpx.AsyncClient() as http:
        download = await http.get(final["url"])
    assert (download.status_code, download.content) == (200, b"the final video")


async def test_unknown_job_is_404(stack):
    for job_id in ("00000000-0000-4000-8000-000000000000", "not-a-job"):
        reply = await stack.api.get(f"/api/jobs/{job_id}/artifacts")
        assert reply.status_code == 404 and set(reply.json()) == {"error"}


async def test_folder_store_links_are_signed_expiring_and_refuse_tampering(stack, finished_job, tmp_path):
    settings = stack.settings.model_copy(
        update={"minio_endpoint": None, "artifacts_dir": tmp_path, "artifact_url_secret": SECRET, "api_keys": ["k"]}
    )
    key = f"jobs/{finished_job}/generate_video.bin"
    (tmp_path / "output" / "jobs" / finished_job).mkdir(parents=True)
    (tmp_path / "output" / key).write_bytes(b"video bytes")
    (tmp_path / "output" / "secret.bin").write_bytes(b"not yours")
    async with api_replica(settings, stack.temporal) as url, httpx.AsyncClient(base_url=url, timeout=10) as api:
        assert (await api.get(f"/api/jobs/{finished_job}/artifacts")).status_code == 401
        reply = await api.get(f"/api/jobs/{finished_job}/artifacts", headers={"Authorization": "Bearer k"})
        link = by_node(reply.json())["generate_video"]["url"]
        assert link.startswith(url + DOWNLOAD_PATH + "?")
        assert by_node(reply.json())["postprocess_video"]["url"] is None

        good = await api.get(link)  # no API key: the signature is the credential
        assert (good.status_code, good.content) == (200, b"video bytes")

        query = {name: values[0] for name, values in parse_qs(urlsplit(link).query).items()}

        async def fetch(**changes) -> httpx.Response:
            return await api.get(DOWNLOAD_PATH + "?" + urlencode({**query, **changes}))

        forged_sig = "0" * 64
        assert (await fetch(sig=forged_sig)).status_code == 403
        assert (await fetch(key="secret.bin")).status_code == 403  # another object under the same signature
        assert (await fetch(expires=int(query["expires"]) + 3600)).status_code == 403  # a longer life
        assert (await fetch(sig="é" * 10)).status_code == 403

        past = int(time.time()) - 1
        expired = await api.get(DownloadSigner(SECRET).link("output", key, past))
        assert expired.status_code == 403 and "expired" in expired.json()["error"]
        other_secret = await api.get(DownloadSigner("another secret").link("output", key, past + 600))
        assert other_secret.status_code == 403

        missing = await api.get(DownloadSigner(SECRET).link("output", "jobs/none.bin", past + 600))
        assert missing.status_code == 404 and set(missing.json()) == {"error"}
        escape = await api.get(DownloadSigner(SECRET).link("output", "../../etc/passwd", past + 600))
        assert escape.status_code == 400
        assert (await fetch(expires="soon")).status_code == 400
        assert (await api.get(DOWNLOAD_PATH, params={"bucket": "output", "key": key})).status_code == 400

    # The S3-backed API serves no downloads itself: its links are presigned by the store.
    assert (await stack.api.get(link.replace(url, ""))).status_code == 404


def test_output_artifacts_finds_named_and_nested_objects():
    graph = {
        "nodes": [
            {"id": "a", "output": {"videoArtifact": {"bucket": "b", "key": "v.mp4"}, "currentProgress": 1}},
            {"id": "u", "output": {"bucket": "b", "objects": {"x.txt": {"bucket": "b", "key": "u/x.txt"}}}},
            {"id": "n", "output": None},
            {"id": "s", "output": {"audioArtifact": {"bucket": "b", "key": 3}}},
        ]
    }
    assert output_artifacts(graph) == [
        ("a", "videoArtifact", {"bucket": "b", "key": "v.mp4"}),
        ("u", "objects.x.txt", {"bucket": "b", "key": "u/x.txt"}),
    ]
    assert output_artifacts(None) == []
