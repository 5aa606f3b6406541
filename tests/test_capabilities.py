"""info.get_capabilities merges the python plane's manifest (a JSON string) with this plane's."""

from __future__ import annotations

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
from core.contracts import contracts, first_error
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
