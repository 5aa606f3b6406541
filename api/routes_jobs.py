"""Job routes of PROTOCOL §5: submit, status, history."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query

from api.deps import BackendDep, StoreDep
from api.errors import ApiError
from api.jobs import job_status, submit_job
from api.models import (
    AcceptedJob,
    ErrorBody,
    JobList,
    JobStatus,
    JobWithEvents,
    PlanningRequest,
)
from core.contracts import ContractError
from core.store import is_job_id, millis
from core.wire import check_portable
from workflows.names import CAPABILITIES_PIPELINE
from workflows.status import JobStatus as JobStatusName

router = APIRouter(prefix="/api", tags=["jobs"], responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


@router.post("/jobs", response_model=AcceptedJob, status_code=200, responses={503: {"model": ErrorBody}})
async def post_job(
    backend: BackendDep,
    request: Annotated[PlanningRequest, Body(discriminator="mode")],
    idempotency_key: IdempotencyKey = None,
):
    """Plan a job (fixed pipeline or caller-supplied graph) and start it."""
    return await submit_job(backend, request.model_dump(), idempotency_key or None)


@router.get("/status/{job_id}", response_model=JobStatus, response_model_exclude_unset=True)
async def get_status(backend: BackendDep, job_id: str):
    return await job_status(backend, job_id)


MAX_OFFSET = 2**63 - 1  # PostgreSQL's bigint


def clamped(raw: str | None, default: int, low: int, high: int) -> int:
    """A pagination value as the system replaced read it: out of range is clamped, not a number is the default."""
    text = (raw or "").strip()
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)  # "1e3", "2.5", "inf"
        except ValueError:
            return default
        if math.isnan(number):
            return default
        value = high if number > high else low if number < low else int(number)
    return max(low, min(high, value))


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    store: StoreDep,
    limit: Annotated[str | None, Query(description="1..100 (default 20); out of range is clamped")] = None,
    offset: Annotated[str | None, Query(description=">= 0 (default 0); out of range is clamped")] = None,
    status: Annotated[str | None, Query(description="Only jobs in this status (400 if not a job status)")] = None,
    pipeline: Annotated[str | None, Query(max_length=200, description="Only jobs of this pipeline")] = None,
    include: Annotated[
        str | None, Query(max_length=200, description="`capabilities`: also list capabilities look-ups")
    ] = None,
):
    """Jobs, newest first; `pagination` shows the limit and offset actually used and how many jobs match."""
    limit_used, offset_used = clamped(limit, 20, 1, 100), clamped(offset, 0, 0, MAX_OFFSET)
    if pipeline is not None:
        try:
            check_portable(pipeline, "pipeline")  # text PostgreSQL can compare: no NUL, no lone surrogate
        except ContractError as exc:
            raise ApiError(400, str(exc)) from None
    if status is not None and status not in set(JobStatusName):
        raise ApiError(400, f"status {status[:50]!r} is not a job status (one of: {', '.join(JobStatusName)})")
    shown = {part.strip() for part in (include or "").split(",") if part.strip()}
    if unknown := shown - {CAPABILITIES_PIPELINE}:
        raise ApiError(400, f"include: unknown {', '.join(sorted(unknown))[:100]!r} (known: {CAPABILITIES_PIPELINE})")
    # Capabilities look-ups are internal jobs: listed only when asked for.
    show_lookups = CAPABILITIES_PIPELINE in shown or pipeline == CAPABILITIES_PIPELINE
    rows, total = await store.list_jobs(
        limit_used, offset_used, status, pipeline, () if show_lookups else (CAPABILITIES_PIPELINE,)
    )
    jobs = [
        {
            "jobId": str(r["job_id"]),
            "status": r["status"],
            "progress": r["progress"],
            "created": millis(r["created"]),
            "pipeline": r["pipeline"],
        }
        for r in rows
    ]
    return {"jobs": jobs, "pagination": {"limit": limit_used, "offset": offset_used, "total": total}}


@router.get("/jobs/{job_id}", response_model=JobWithEvents)
async def get_job(store: StoreDep, job_id: str):
    """One job with its latest graph and its newest 50 events."""
    row = await store.job(job_id) if is_job_id(job_id) else None
    if not row:
        raise ApiError(404, f"job {job_id} not found")
    events = await store.events(job_id, 50)
    return {
        "job": {
            "jobId": str(row["job_id"]),
            "status": row["status"],
            "progress": row["progress"],
            "lastGraph": row["last_graph"],
            "created": millis(row["created"]),
        },
        "events": [
            {
                "eventId": e["event_id"],
                "status": e["status"],
                "progress": e["progress"],
                "data": e["data"],
                "created": millis(e["created"]),
            }
            for e in events
        ],
    }
