"""The job rows of retries: the claim a retry makes before it starts the new run, and the relays' look-up of retries
that never started (their API died in between), which they put back to `failed` (handoff/unstarted.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus

from core.event_rows import Event
from core.row_lock import job_row_held
from workflows.status import JobStatus

# How a job's last run may have ended for the job to be retried (a retry replaces only such a run).
RETRIED_ENDINGS = (
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
)


def retry_never_started(row: dict, run: WorkflowExecutionDescription | None) -> bool:
    """`advertised`, and the run the retry replaced is still the latest: a retry reset the job and its API died
    before Temporal took the new run. (How long ago is the callers' to check: a retry may still be starting.)"""
    if row["status"] != JobStatus.ADVERTISED:
        return False
    if run is None:
        return True  # the job's runs are gone from Temporal (its namespace's retention)
    if run.status not in RETRIED_ENDINGS:
        return False
    if row.get("retried_run"):
        return run.run_id == row["retried_run"]
    # Claimed before the claim recorded its run (migration 0005): by the clocks, the reset after the run closed.
    return run.close_time is not None and run.close_time <= row["updated"]


class RetryRows:
    """Part of `core.store.Store`, on its pool."""

    pool: asyncpg.Pool

    async def claim_retry(
        self, job_id: str, seen: dict, progress: float, settled_seconds: float, replaced_run: str | None
    ) -> bool:
        """Reset the job for a retry of `replaced_run` (its latest run, if Temporal still has it) if its row is still
        as `seen` (a `job()` row), and it is failed, or advertised for longer than `settled_seconds` (a retry that
        never started); False if another got there first."""
        outcome = await self.pool.execute(
            """
            UPDATE jobs SET status = 'advertised', progress = $4, updated = now(), retried_run = $6
            WHERE job_id = $1 AND status = $2 AND updated = $3
              AND (status = 'failed' OR updated < now() - make_interval(secs => $5))
            """,
            uuid.UUID(job_id),
            seen["status"],
            seen["updated"],
            progress,
            settled_seconds,
            replaced_run,
        )
        return outcome == "UPDATE 1"

    async def unstarted_retries(self, settled_seconds: float, after: tuple = (), page: int = 100) -> list[dict]:
        """Jobs `advertised` for longer than `settled_seconds` whose last graph failed: retries that may never have
        started (their API died before Temporal took the new run); a page, oldest first, after `after`'s
        (updated, job_id)."""
        rows = await self.pool.fetch(
            """
            SELECT job_id, status, updated, last_graph, retried_run FROM jobs
            WHERE status = 'advertised' AND updated < now() - make_interval(secs => $1)
              AND last_graph->'metadata' ? 'failure'
              AND ($2::timestamptz IS NULL OR (updated, job_id) > ($2, $3))
            ORDER BY updated, job_id LIMIT $4
            """,
            settled_seconds,
            *(after or (None, None)),
            page,
        )
        return [dict(r) for r in rows]

    async def restore_failed(
        self, job_id: str, seen_updated: datetime, progress: float, event: Event, tell: Callable[[], Awaitable]
    ) -> bool:
        """Put an unstarted retry's job back to `failed` with its status event, if still as read; `tell` (the Redis
        half) runs under the row's lock, so that a retry claiming the job waits and then finds it taken, and of two
        relays one does it."""
        async with job_row_held(self.pool, job_id, seen_updated) as conn:
            if conn is None:
                return False
            await tell()
            await conn.execute(
                """
                WITH ev AS (
                    INSERT INTO job_events (job_id, status, data, fingerprint, created) VALUES ($1, $3, $4, $5, $6)
                    ON CONFLICT (job_id, fingerprint) DO NOTHING
                )
                UPDATE jobs SET status = 'failed', progress = $2, updated = now() WHERE job_id = $1
                """,
                uuid.UUID(job_id),
                progress,
                event.status,
                event.data,
                event.fingerprint,
                event.created,
            )
        return True
