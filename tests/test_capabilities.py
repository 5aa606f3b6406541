"""info.get_capabilities merges the python plane's manifest (a JSON string) with this plane's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError

from activities.capabilities import get_capabilities
from activities.resources import Resources
from config import CONFIG_DIR
from core.contracts import contracts
from core.schemas import first_error
from core.settings import Settings
from workflows.inputs import NodeTask

WORKER_CAPS = (CONFIG_DIR / "python-capabilities.json").read_text()


@pytest.fixture
async def resources():
    # This service touches neither Redis nor HTTP; the clients are only there to complete Resources.
    async with httpx.AsyncClient() as http:
        redis = aioredis.Redis()
        yield Resources(Settings(), contracts(), redis, http)
        await redis.aclose()


def info_task(node_input: dict) -> NodeTask:
    return NodeTask(
        job_id="caps-job", node_id="control.info", service="info.get_capabilities", params={}, input=node_input
    )


def ids(manifest: dict) -> list[str]:
    return [cap["id"] for cap in manifest["capabilities"]]


async def test_combines_control_then_worker_capabilities(resources):
    node, python = json.loads((CONFIG_DIR / "capabilities.json").read_text()), json.loads(WORKER_CAPS)

    combined = await get_capabilities(info_task({"workerCaps": WORKER_CAPS, "currentProgress": 0.5}), resources)

    assert first_error(combined, "combined-manifest.schema.json") is None
    assert ids(combined) == ids(node) + ids(python)
    assert {cap["plane"] for cap in combined["capabilities"][: len(ids(node))]} == {"node"}
    assert combined["sources"] == {
        "control": {"plane": "node", "number": len(ids(node))},
        "worker": {"plane": "python", "number": len(ids(python))},
    }
    assert "llm.generate_script" in ids(combined) and "generate.f5_to_tts" in ids(combined)
    assert datetime.fromisoformat(combined["generatedAt"]).utcoffset() == timedelta(0)


def broken_worker_caps(change) -> str:
    manifest = json.loads(WORKER_CAPS)
    change(manifest)
    return json.dumps(manifest)


@pytest.mark.parametrize(
    "node_input, named",
    [
        ({}, "input.workerCaps: missing"),
        ({"workerCaps": None}, "input.workerCaps: must be a JSON string"),
        ({"workerCaps": json.loads(WORKER_CAPS)}, "input.workerCaps: must be a JSON string, got dict"),
        ({"workerCaps": "{not json"}, "input.workerCaps: not valid JSON"),
        ({"workerCaps": "[]"}, "input.workerCaps: (root)"),
        ({"workerCaps": broken_worker_caps(lambda m: m.pop("generatedAt"))}, "generatedAt"),
        ({"workerCaps": broken_worker_caps(lambda m: m["capabilities"][0].pop("runtime"))}, "runtime"),
        (
            {"workerCaps": broken_worker_caps(lambda m: m["capabilities"][1].update(id="No Dots"))},
            "input.workerCaps: capabilities/1/id",
        ),
        (
            {"workerCaps": broken_worker_caps(lambda m: m["capabilities"][2].update(plane="node"))},
            "input.workerCaps: capabilities/2/plane: must be 'python'",
        ),
    ],
    ids=["missing", "null", "object", "bad-json", "array", "no-generatedAt", "no-runtime", "bad-id", "wrong-plane"],
)
async def test_bad_worker_manifest_is_invalid_for_good(resources, node_input, named):
    with pytest.raises(ApplicationError) as caught:
        await get_capabilities(info_task(node_input), resources)

    assert (caught.value.type, caught.value.non_retryable) == ("InvalidManifest", True)
    assert named in caught.value.message


async def test_broken_control_manifest_is_invalid_too(resources):
    control = json.loads((CONFIG_DIR / "capabilities.json").read_text())
    del control["capabilities"][0]["handler"]
    res = dataclasses.replace(resources, contracts=dataclasses.replace(resources.contracts, capabilities=control))

    with pytest.raises(ApplicationError) as caught:
        await get_capabilities(info_task({"workerCaps": WORKER_CAPS}), res)

    assert caught.value.type == "InvalidManifest"
    assert "config/capabilities.json: capabilities/0: 'handler' is a required property" in caught.value.message


# The existing data-plane worker's manifest exactly as its models serialise it (PROTOCOL.md §7): every field
# dumped (null when unset), lists of parameters and examples, floats, -1.0 for "no limit", no top-level plane.
REAL_WORKER_MANIFEST = {
    "generatedAt": "2025-11-24T10:15:02.113482+00:00",
    "capabilities": [
        {
            "id": "info.get_capabilities",
            "label": "Get capabilities",
            "description": "Returns the worker manifest.",
            "version": "1.0.0",
            "plane": "python",
            "runtime": {"kind": "python", "timeoutSeconds": 10.0, "concurrency": 1.0},
            "handler": {"module": "services.info", "method": "get_capabilities"},
            "io": {
                "input": {"type": "object", "required": [], "properties": {}},
                "output": {
                    "type": "object",
                    "required": ["workerCaps"],
                    "properties": {"workerCaps": {"type": "string"}},
                },
            },
            "parameters": [],
            "examples": [],
            "telemetry": {"emitsProgressEvents": False, "metrics": []},
            "security": {"requiresSecrets": []},
            "contracts": {"idempotent": True, "sideEffects": []},
        },
        {
            "id": "generate.f5_to_tts",
            "label": "F5 TTS",
            "description": None,
            "version": "0.3.1",
            "plane": "python",
            "runtime": {"kind": "python", "timeoutSeconds": -1.0, "concurrency": 1.0},
            "handler": {"module": "services.f5_tts", "method": "f5_to_tts"},
            "io": {
                "input": {
                    "type": "object",
                    "required": [],
                    "properties": {"audioPath": {"type": "string"}, "refText": {"type": "string"}},
                },
                "output": {"type": "object", "required": [], "properties": {"audioArtifact": {"type": "object"}}},
            },
            "parameters": [
                {
                    "name": "audioPath",
                    "type": "string",
                    "description": "Reference voice",
                    "required": True,
                    "default": None,
                },
                {"name": "refText", "type": "string", "description": None, "required": False, "default": None},
                {"name": "speed", "type": "number", "description": None, "required": None, "default": 1.0},
            ],
            "examples": [{"input": {"audioPath": "input/audio/a.wav"}, "output": None}],
            "telemetry": {"emitsProgressEvents": True, "metrics": ["duration_seconds"]},
            "security": {"requiresSecrets": ["MINIO_SECRET_KEY"]},
            "contracts": {"idempotent": False, "sideEffects": ["object-storage"]},
        },
        {
            "id": "generate.upscale_video",
            "label": "Upscale",
            "description": "Upscales the talking video.",
            "version": "0.1.0",
            "plane": "python",
            "runtime": {"kind": "python", "timeoutSeconds": 3600.0, "concurrency": 2.0},
            "handler": {"module": "services.upscale", "method": "upscale_video"},
            "io": {"input": {"type": "object", "required": []}, "output": {"type": "object", "required": []}},
            "parameters": None,
            "examples": None,
            "telemetry": None,
            "security": None,
            "contracts": None,
        },
    ],
}


def test_real_worker_manifest_satisfies_the_plane_schema():
    assert first_error(REAL_WORKER_MANIFEST, "plane-manifest.schema.json") is None


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda cap: cap["runtime"].update(timeoutSeconds=0), "runtime/timeoutSeconds"),
        (lambda cap: cap["runtime"].update(timeoutSeconds=-2.0), "runtime/timeoutSeconds"),
        (lambda cap: cap["runtime"].update(concurrency=1.5), "runtime/concurrency"),
        (lambda cap: cap.update(parameters={"type": "object"}), "parameters"),
        (lambda cap: cap["parameters"][0].pop("name"), "parameters/0"),
        (lambda cap: cap["io"]["input"].update(required="audioPath"), "io/input/required"),
    ],
    ids=["zero-timeout", "negative-timeout", "fractional-concurrency", "parameters-object", "nameless", "required"],
)
def test_the_plane_schema_still_rejects_what_is_wrong(change, field):
    manifest = json.loads(json.dumps(REAL_WORKER_MANIFEST))
    change(manifest["capabilities"][1])
    assert f"capabilities/1/{field}" in (first_error(manifest, "plane-manifest.schema.json") or "")


async def test_capabilities_endpoint_combines_a_real_worker_manifest(stack):
    """GET /api/capabilities end to end, with a data-plane peer answering with the real worker's manifest."""
    from handoff.dataplane import DataPlaneWorker
    from tests.stack import api_replica

    spec = contracts()
    peer = DataPlaneWorker(stack.redis, spec.bridge, REAL_WORKER_MANIFEST, None, consumer="real-shape-worker")
    async with stack.no_dataplane():
        serving = asyncio.create_task(peer.run())
        try:
            async with api_replica(stack.settings, stack.temporal) as url:  # a fresh, empty cache
                async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                    reply = await client.get("/api/capabilities")
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    assert reply.status_code == 200, reply.text
    body = reply.json()
    control = spec.capabilities["capabilities"]
    assert body["sources"] == {
        "control": {"plane": "node", "number": len(control)},
        "worker": {"plane": "python", "number": 3},
    }
    assert body["capabilities"] == [*control, *REAL_WORKER_MANIFEST["capabilities"]]
