"""GET /api/capabilities: the two-node capabilities graph through the real handoff, cached when good."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter
from temporalio.client import WorkflowFailureError

from api.deps import Backend, BackendDep
from api.errors import ApiError
from api.jobs import start_job
from api.models import CombinedManifest, ErrorBody
from core.planner import PlanningError, plan
from workflows.names import CAPABILITIES_PIPELINE
from workflows.status import NodeStatus

router = APIRouter(prefix="/api", tags=["capabilities"])

CAPABILITIES_GRAPH = {
    "schema": "langgraph.v1",
    "workflowId": "",
    "context": {"pipeline": CAPABILITIES_PIPELINE},
    "nodes": [
        {
            "id": "worker.info",
            "service": "info.get_capabilities",
            "plane": "python",
            "status": NodeStatus.PENDING,
            "progressWeight": 0.5,
        },
        {
            "id": "control.info",
            "service": "info.get_capabilities",
            "plane": "node",
            "status": NodeStatus.PENDING,
            "progressWeight": 0.5,
        },
    ],
    "edges": [{"from": "worker.info", "to": "control.info"}],
}


class CapabilitiesCache:
    """One good answer kept for a while; concurrent misses share one run instead of stampeding."""

    def __init__(self):
        self.value: dict | None = None
        self.expires = 0.0
        self.inflight: asyncio.Task | None = None

    async def get(self, backend: Backend) -> dict:
        if self.value is not None and time.monotonic() < self.expires:
            return self.value
        if self.inflight is None or self.inflight.done():
            self.inflight = asyncio.create_task(_run_capabilities_job(backend))
        value = await asyncio.shield(self.inflight)
        self.value, self.expires = value, time.monotonic() + backend.settings.capabilities_cache_seconds
        return value


async def _run_capabilities_job(backend: Backend) -> dict:
    timeout = backend.settings.capabilities_timeout_seconds
    try:
        graph = plan(
            {"mode": "process_graph", "graph": CAPABILITIES_GRAPH},
            str(uuid.uuid4()),
            backend.contracts,
            backend.settings.llm_defaults,
        )
    except PlanningError as exc:  # a broken shipped graph: our bug, not the caller's
        raise ApiError(500, f"capabilities graph rejected: {exc}") from None
    job = await start_job(backend, graph, segment_timeout=timeout)
    handle = backend.temporal.get_workflow_handle(job["jobId"])
    try:
        # The segment timeout ends the job itself; the extra second covers the node-plane merge.
        async with asyncio.timeout(timeout + 1):
            state = await handle.result()
    except TimeoutError:
        raise ApiError(504, f"no data-plane worker answered info.get_capabilities within {timeout:g}s") from None
    except WorkflowFailureError as exc:
        cause = getattr(exc.cause, "message", None) or str(exc.cause)
        if "SegmentTimeout" in cause or "did not hand back" in cause:
            raise ApiError(
                504, f"no data-plane worker answered info.get_capabilities within {timeout:g}s ({cause})"
            ) from None
        raise ApiError(502, f"capabilities could not be combined: {cause}") from None
    outputs = {node["id"]: node.get("output") for node in state["graph"]["nodes"]}
    return outputs["control.info"]


@router.get("/capabilities", response_model=CombinedManifest, responses={504: {"model": ErrorBody}})
async def capabilities(backend: BackendDep):
    """Both planes' capabilities: this plane's manifest merged with the data-plane worker's answer."""
    if backend.capabilities is None:
        backend.capabilities = CapabilitiesCache()
    return await backend.capabilities.get(backend)
