"""info.get_capabilities: the data plane's manifest and this plane's, combined into the one the API serves."""

from __future__ import annotations

import json

from temporalio.exceptions import ApplicationError

from activities.resources import Resources
from core.schemas import first_error
from core.timestamps import iso_now
from workflows.inputs import NodeTask

PLANE_SCHEMA = "plane-manifest.schema.json"
COMBINED_SCHEMA = "combined-manifest.schema.json"


def invalid_manifest(problem: str) -> ApplicationError:
    return ApplicationError(f"info.get_capabilities: {problem}", type="InvalidManifest", non_retryable=True)


def _checked(manifest, where: str, schema_file: str, plane: str | None = None) -> dict:
    """`manifest` if it satisfies `schema_file` (and every capability belongs to `plane`), else InvalidManifest."""
    problem = first_error(manifest, schema_file)
    if problem:
        raise invalid_manifest(f"{where}: {problem}")
    if plane:
        for i, cap in enumerate(manifest["capabilities"]):
            if cap["plane"] != plane:
                raise invalid_manifest(f"{where}: capabilities/{i}/plane: must be {plane!r}, got {cap['plane']!r}")
    return manifest


def worker_manifest(node_input: dict) -> dict:
    """The python plane's manifest from `input.workerCaps`, a JSON string written by its info node."""
    if "workerCaps" not in node_input:
        raise invalid_manifest("input.workerCaps: missing (the python-plane info.get_capabilities node must run first)")
    text = node_input["workerCaps"]
    if not isinstance(text, str):
        raise invalid_manifest(f"input.workerCaps: must be a JSON string, got {type(text).__name__}")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise invalid_manifest(f"input.workerCaps: not valid JSON ({exc})") from exc
    return _checked(manifest, "input.workerCaps", PLANE_SCHEMA, plane="python")


async def get_capabilities(task: NodeTask, res: Resources) -> dict:
    """Both planes' capabilities, control plane first, with how many each contributed."""
    worker = worker_manifest(task.input or {})
    control = _checked(res.contracts.capabilities, "config/capabilities.json", PLANE_SCHEMA, plane="node")
    combined = {
        "generatedAt": iso_now(),
        "capabilities": [*control["capabilities"], *worker["capabilities"]],
        "sources": {
            "control": {"plane": "node", "number": len(control["capabilities"])},
            "worker": {"plane": "python", "number": len(worker["capabilities"])},
        },
    }
    return _checked(combined, "combined manifest", COMBINED_SCHEMA)
