"""Submitting and reading jobs: planner → PostgreSQL row → Redis keys → Temporal workflow."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError

from api.deps import Backend
from api.errors import ApiError
from core import jobkeys
from core.failures import UNKNOWN_CODE, job_error, job_error_from_json
from core.metrics import JOBS_SUBMITTED
from core.planner import PlanningError, plan
from core.store import is_job_id, millis
from core.timestamps import now_ms
from workflows.inputs import JobInput
from workflows.names import (
    JOB_WORKFLOW,
    PIPELINE_ATTRIBUTE,
    STATUS_ATTRIBUTE,
    WORKFLOW_QUEUE,
)
from workflows.status import JobStatus

# Idempotency keys map to job ids deterministically, so a repeated submission finds the same job.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b1b07a0-0000-4000-8000-000000000001")


def _search_attributes(status: str, pipeline: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE), status),
            SearchAttributePair(SearchAttributeKey.for_keyword(PIPELINE_ATTRIBUTE), pipeline),
        ]
    )


async def submit_job(backend: Backend, request: dict, idempotency_key: str | None = None) -> dict:
    """Plan, record and start a job; returns the accepted job of PROTOCOL §5."""
    if idempotency_key and (existing := await job_for_key(backend, idempotency_key)):
        return existing
    job_id = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key)) if idempotency_key else str(uuid.uuid4())
    try:
        graph = plan(request, job_id, backend.contracts, backend.settings.llm_defaults)
    except PlanningError as exc:
        raise ApiError(400, str(exc)) from None
    return await start_job(backend, graph, idempotency_key)


async def job_for_key(backend: Backend, idempotency_key: str) -> dict | None:
    """The accepted job an earlier submission with this Idempotency-Key started, if any."""
    job_id = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key))
    existing = await backend.store.job(job_id)
    return accepted(job_id, existing["created"]) if existing else None


async def start_job(
    backend: Backend,
    graph: dict,
    idempotency_key: str | None = None,
    attempt: int = 1,
    segment_timeout: float | None = None,
) -> dict:
    job_id, pipeline = graph["workflowId"], graph["context"]["pipeline"]
    created_ms = await backend.store.create_job(job_id, graph, pipeline, idempotency_key)
    await announce_accepted(backend, graph)
    job = JobInput(graph, backend.runtimes, segment_timeout or backend.settings.segment_timeout_seconds, attempt)
    try:
        await backend.temporal.start_workflow(
            JOB_WORKFLOW,
            job,
            id=job_id,
            task_queue=WORKFLOW_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=_search_attributes(JobStatus.ADVERTISED, pipeline),
            static_summary=f"{pipeline} job",
        )
    except RPCError as exc:
        if attempt == 1:  # nothing half-made: a retry with the same key starts afresh (a failed retry stays failed)
            await forget_job(backend, job_id)
        raise ApiError(503, f"workflow service unavailable: {exc.message}") from None
    JOBS_SUBMITTED.labels(pipeline=pipeline).inc()
    return accepted(job_id, created_ms)


async def forget_job(backend: Backend, job_id: str) -> None:
    bridge = backend.contracts.bridge
    await backend.store.forget_job(job_id)
    await backend.redis.delete(bridge.job_key(job_id), bridge.status_key(job_id), bridge.progress_key(job_id))


async def announce_accepted(backend: Backend, graph: dict) -> None:
    """job:<id>:progress must exist (0) from the moment a job is accepted: the data plane reads it."""
    bridge, job_id, created = backend.contracts.bridge, graph["workflowId"], now_ms()
    pipe = backend.redis.pipeline(transaction=False)
    jobkeys.set_graph(pipe, bridge, job_id, json.dumps(graph, separators=(",", ":")), created)
    jobkeys.set_state(pipe, bridge, job_id, JobStatus.ADVERTISED, 0.0)
    pipe.publish(
        bridge.channel("status", job_id),
        json.dumps({"jobId": job_id, "status": JobStatus.ADVERTISED, "created": created}),
    )
    await pipe.execute()


def accepted(job_id: str, created: datetime | int) -> dict:
    created_ms = millis(created) if isinstance(created, datetime) else int(created)
    return {"jobId": job_id, "status": JobStatus.ADVERTISED, "progress": 0, "created": str(created_ms)}


async def job_status(backend: Backend, job_id: str) -> dict:
    """Status from the Redis keys (fast path), else from PostgreSQL; 404 when unknown."""
    bridge = backend.contracts.bridge
    status, progress = await backend.redis.mget(bridge.status_key(job_id), bridge.progress_key(job_id))
    if status is None and is_job_id(job_id):
        row = await backend.store.job_status(job_id)
        if row:
            status, progress = row["status"], row["progress"]
    if status is None:
        raise ApiError(404, f"job {job_id} not found")
    state: dict[str, object] = {"jobId": job_id, "status": status, "progress": float(progress or 0)}
    if status == JobStatus.FAILED:
        state["error"] = await failure_of(backend, job_id)
    return state


async def failure_of(backend: Backend, job_id: str) -> dict:
    """Why a failed job failed, from its latest graph: Redis job:<id> first, else PostgreSQL's last_graph."""
    graph_json = await backend.redis.hget(backend.contracts.bridge.job_key(job_id), "graph")
    error = job_error_from_json(graph_json)
    if error is None and is_job_id(job_id):
        row = await backend.store.job(job_id)
        error = job_error(row["last_graph"]) if row else None
    return error or {"nodeId": None, "message": "failed", "code": UNKNOWN_CODE}
