"""Job control beyond the old API: cancel, retry (re-running only what failed), the live graph."""

from __future__ import annotations

from fastapi import APIRouter
from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Backend, BackendDep
from api.errors import ApiError
from api.jobs import start_job
from api.models import AcceptedJob, ErrorBody, JobControl, LiveGraph
from core.retry_rows import retry_never_started
from core.store import is_job_id
from core.temporal import RPC_TIMEOUT
from workflows.graph import reset_for_retry
from workflows.names import STATE
from workflows.status import JobStatus

RUNNING = WorkflowExecutionStatus.RUNNING

router = APIRouter(
    prefix="/api/jobs",
    tags=["job control"],
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)


async def _known_job(backend: Backend, job_id: str) -> dict:
    row = await backend.store.job(job_id) if is_job_id(job_id) else None
    if not row:
        raise ApiError(404, f"job {job_id} not found")
    return row


async def _latest_run(backend: Backend, job_id: str) -> WorkflowExecutionDescription | None:
    try:
        return await backend.temporal.get_workflow_handle(job_id).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise ApiError(503, f"Temporal unavailable: {exc.message}") from None


async def _workflow_status(backend: Backend, job_id: str) -> WorkflowExecutionStatus | None:
    run = await _latest_run(backend, job_id)
    return run.status if run else None


@router.post("/{job_id}/cancel", response_model=JobControl, status_code=202)
async def cancel_job(backend: BackendDep, job_id: str):
    """Ask the job's workflow to cancel: node-plane work stops and the job ends `failed` (cancelled)."""
    await _known_job(backend, job_id)
    if await _workflow_status(backend, job_id) != RUNNING:
        raise ApiError(409, f"job {job_id} is not running")
    try:
        await backend.temporal.get_workflow_handle(job_id).cancel(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        raise ApiError(503, f"Temporal unavailable: {exc.message}") from None
    return {"jobId": job_id, "message": "cancellation requested"}


@router.post("/{job_id}/retry", response_model=AcceptedJob)
async def retry_job(backend: BackendDep, job_id: str):
    """A new run of a failed job: failed and skipped nodes run again, completed outputs are kept."""
    row = await _known_job(backend, job_id)
    run = await _latest_run(backend, job_id)
    failed = row["status"] == JobStatus.FAILED and (run is None or run.status != RUNNING)
    if not failed and not retry_never_started(row, run):
        raise ApiError(409, f"job {job_id} has not failed (status {row['status']}); only failed jobs can be retried")
    graph = reset_for_retry(row["last_graph"])
    metadata = graph.setdefault("metadata", {})
    metadata.pop("failure", None)
    metadata.pop("handoff", None)
    metadata["attempt"] = int(metadata.get("attempt", 1)) + 1
    replaced_run = run.run_id if run else None
    return await start_job(backend, graph, attempt=metadata["attempt"], retried=row, replaced_run=replaced_run)


@router.get("/{job_id}/graph", response_model=LiveGraph)
async def live_graph(backend: BackendDep, job_id: str):
    """The graph as the workflow holds it right now (Temporal query)."""
    await _known_job(backend, job_id)
    try:
        state = await backend.temporal.get_workflow_handle(job_id).query(STATE, rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ApiError(404, f"job {job_id} has no workflow") from None
        raise ApiError(503, f"Temporal query failed: {exc.message}") from None
    return {"jobId": job_id, **state}
