"""Submitting and reading jobs: planner → Temporal workflow (the commit point) → PostgreSQL row and Redis keys."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime

import asyncpg
from redis.exceptions import RedisError
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.deps import Backend
from api.errors import ApiError, unavailable
from core import jobkeys
from core.contracts import python_timeouts
from core.failures import UNKNOWN_CODE, job_error, job_error_from_json
from core.logs import log_event
from core.metrics import JOBS_SUBMITTED
from core.outages import POSTGRES_DOWN, REDIS, REDIS_DOWN
from core.planner import PlanningError, plan
from core.store import is_job_id, millis
from core.temporal import RPC_TIMEOUT
from core.timestamps import now_ms
from workflows.graph import job_progress
from workflows.inputs import JobInput
from workflows.names import (
    CAPABILITIES_PIPELINE,
    CONTROL_SOURCE,
    JOB_WORKFLOW,
    PIPELINE_ATTRIBUTE,
    STATUS_ATTRIBUTE,
    WORKFLOW_QUEUE,
)
from workflows.status import JobStatus

log = logging.getLogger(__name__)

# Redis down, or the data plane wrote bytes that are not text: the graph is read from PostgreSQL instead.
GRAPH_UNREADABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, UnicodeDecodeError)

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
    settings = backend.settings
    args = (request, job_id, backend.contracts, settings.llm_defaults, settings.llm_allowed_endpoints)
    try:
        # A caller's graph may have hundreds of nodes: plan it off the event loop, so WebSocket pushes go on.
        graph = await asyncio.to_thread(plan, *args) if request.get("mode") == "process_graph" else plan(*args)
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
    retried: dict | None = None,
    replaced_run: str | None = None,
) -> dict:
    """Start the job's workflow, then record it; returns the accepted job.

    Starting the workflow is the commit point: a crash before it leaves nothing, a crash after it leaves a
    job that runs (its workflow's first step writes the row and keys too). So no `advertised` row ever
    exists without a workflow, and an Idempotency-Key retry finds the same workflow.
    """
    job_id, pipeline = graph["workflowId"], graph["context"]["pipeline"]
    accepted_at = now_ms()  # `advertised` happened before the workflow's first step, even if announced after it
    if retried is not None:
        await _reset_for_attempt(backend, graph, retried, replaced_run)
    ceiling = segment_timeout or backend.settings.segment_timeout_seconds
    job = JobInput(graph, backend.runtimes, ceiling, attempt, python_timeouts(backend.contracts))
    try:
        await backend.temporal.start_workflow(
            JOB_WORKFLOW,
            job,
            id=job_id,
            task_queue=WORKFLOW_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A first attempt never reuses the id of a finished job; a retry replaces only a failed run.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE
            if attempt == 1
            else WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=_search_attributes(JobStatus.ADVERTISED, pipeline),
            static_summary=f"{pipeline} job",
            rpc_timeout=RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        existing = await backend.store.job(job_id)
        return accepted(job_id, existing["created"] if existing else int(now_ms()))
    except RPCError as exc:
        if retried is not None:
            await _record_status(backend, job_id, JobStatus.FAILED)  # the retry never started: still failed
        raise ApiError(503, f"Temporal unavailable: {exc.message}") from None
    if pipeline != CAPABILITIES_PIPELINE:
        JOBS_SUBMITTED.labels(pipeline=pipeline).inc()
        log_event(log, "job submitted", job_id=job_id, pipeline=pipeline, attempt=attempt)
    created_ms = int(now_ms())
    try:
        created_ms = await backend.store.create_job(job_id, graph, pipeline, idempotency_key)
        await announce_accepted(backend, graph, accepted_at)
    except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The job runs regardless; its workflow records it as soon as the store answers again.
        log.warning("job %s started but not yet recorded (%s: %s)", job_id, type(exc).__name__, exc)
    return accepted(job_id, created_ms)


async def _reset_for_attempt(backend: Backend, graph: dict, row: dict, replaced_run: str | None) -> None:
    """A retry starts from clean state: status advertised and the reset graph's own progress, set exactly. The row
    goes first, and only if it is still as the retry read it: of two retries at once, one starts the job. It names
    the run it replaces: while that run is still the latest, the retry has not started (core/retry_rows.py)."""
    bridge, job_id = backend.contracts.bridge, graph["workflowId"]
    progress = job_progress(graph)
    settled = backend.settings.retry_settled_seconds
    if not await backend.store.claim_retry(job_id, row, progress, settled, replaced_run):
        raise ApiError(409, f"job {job_id} is being retried already")
    pipe = backend.redis.pipeline(transaction=False)
    pipe.set(bridge.status_key(job_id), JobStatus.ADVERTISED, ex=bridge.ttl)
    pipe.set(bridge.progress_key(job_id), jobkeys.format_progress(progress), ex=bridge.ttl)
    await pipe.execute()


async def _record_status(backend: Backend, job_id: str, status: str) -> None:
    bridge = backend.contracts.bridge
    await backend.redis.set(bridge.status_key(job_id), status, ex=bridge.ttl)
    await backend.store.reset_job(job_id, status, None)


async def announce_accepted(backend: Backend, graph: dict, created: str) -> None:
    """job:<id>:progress must exist (0) from the moment a job is accepted: the data plane reads it.

    Written only where absent: the workflow may already have recorded newer state.
    """
    bridge, job_id = backend.contracts.bridge, graph["workflowId"]
    pipe = backend.redis.pipeline(transaction=False)
    jobkeys.set_graph_if_absent(pipe, bridge, job_id, json.dumps(graph, separators=(",", ":")), created)
    jobkeys.advance_status(pipe, bridge, job_id, JobStatus.ADVERTISED)
    jobkeys.raise_progress(pipe, bridge, job_id, 0.0)
    pipe.publish(
        bridge.channel("status", job_id),
        json.dumps({"jobId": job_id, "status": JobStatus.ADVERTISED, "created": created, "source": CONTROL_SOURCE}),
    )
    await pipe.execute()


def accepted(job_id: str, created: datetime | int) -> dict:
    created_ms = millis(created) if isinstance(created, datetime) else int(created)
    return {"jobId": job_id, "status": JobStatus.ADVERTISED, "progress": 0, "created": str(created_ms)}


async def job_status(backend: Backend, job_id: str) -> dict:
    """Status from the Redis keys (fast path), else from PostgreSQL, also while Redis is down; 404 when unknown."""
    bridge = backend.contracts.bridge
    redis_down = False
    try:
        status, progress = await backend.redis.mget(bridge.status_key(job_id), bridge.progress_key(job_id))
    except REDIS_DOWN as exc:
        log.warning("status of job %s from PostgreSQL: Redis unavailable (%s)", job_id, exc)
        status, progress, redis_down = None, None, True
    if status is None and is_job_id(job_id):
        try:
            row = await backend.store.job_status(job_id)
        except POSTGRES_DOWN:
            if redis_down:
                raise ApiError(503, "Redis and PostgreSQL unavailable; try again shortly") from None
            raise
        if row:
            status, progress = row["status"], row["progress"]
    if status is None:
        if redis_down:
            raise unavailable(REDIS)  # only Redis knows jobs whose id PostgreSQL cannot hold
        raise ApiError(404, f"job {job_id} not found")
    state: dict[str, object] = {"jobId": job_id, "status": status, "progress": float(progress or 0)}
    if status == JobStatus.FAILED:
        state["error"] = await failure_of(backend, job_id)
    return state


async def failure_of(backend: Backend, job_id: str) -> dict:
    """Why a failed job failed, from its latest graph: Redis job:<id> first, else PostgreSQL's last_graph."""
    try:
        graph_json = await backend.redis.hget(backend.contracts.bridge.job_key(job_id), "graph")
    except GRAPH_UNREADABLE:
        graph_json = None
    error = job_error_from_json(graph_json)
    if error is None and is_job_id(job_id):
        row = await backend.store.job(job_id)
        error = job_error(row["last_graph"]) if row else None
    return error or {"nodeId": None, "message": "failed", "code": UNKNOWN_CODE}
