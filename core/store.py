"""The PostgreSQL store: jobs and job_events, through one asyncpg pool, every query parameterised."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import asyncpg

from core import jobkeys
from core.event_rows import APPLY_EVENT, Event, event_args, lock_order
from core.retry import call_with_retry
from core.retry_rows import RetryRows
from core.row_lock import job_row_held
from workflows.graph import progress_ceiling

# What PostgreSQL being down, restarting or briefly unable to take a write looks like from asyncpg: worth waiting
# out, never a lost write. Besides a lost connection: a shutdown, a transaction rolled back for a deadlock or a
# serialization failure, resources run out (disk, memory, connections), a lock not granted, a standby not yet
# promoted after a failover.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)

# PostgreSQL refusing a statement (a value it cannot take, say): not worth retrying as it is.
REFUSED = asyncpg.PostgresError

COMMAND_TIMEOUT = 30.0  # seconds; no query may hang a relay or a request for ever


def is_job_id(value: str) -> bool:
    """A job id as jobs are given them: a UUID spelt canonically (lower case, dashed). PostgreSQL would find a job by
    any spelling of its UUID (upper case, braces, `urn:uuid:`), but its workflow and Redis keys know this one only:
    such an id found the job's status, then could not cancel it nor follow it over WebSocket."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def millis(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class PooledConnection(asyncpg.Connection):
    """Released to the pool without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): a round
    trip on every release, and no code here sets session state, listens or takes advisory locks. An open transaction
    is still rolled back on release (asyncpg does that apart from the query)."""

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect_pool(database_url: str, timeout: float = 30.0, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool, waiting with backoff until PostgreSQL answers (or `timeout` passes)."""
    return await call_with_retry(
        "connecting to PostgreSQL",
        (OSError, asyncpg.PostgresError),
        lambda: asyncpg.create_pool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            command_timeout=COMMAND_TIMEOUT,
            connection_class=PooledConnection,
        ),
        timeout=timeout,
    )


class Store(RetryRows):
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create_job(
        self, job_id: str, graph: dict, pipeline: str | None, idempotency_key: str | None = None
    ) -> int:
        """Insert an `advertised` job; returns its creation time in ms. Idempotent on job_id."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO jobs (job_id, status, progress, pipeline, last_graph, idempotency_key)
            VALUES ($1, 'advertised', 0, $2, $3, $4)
            ON CONFLICT (job_id) DO UPDATE
               SET idempotency_key = coalesce(jobs.idempotency_key, EXCLUDED.idempotency_key)
            RETURNING created
            """,
            uuid.UUID(job_id),
            pipeline,
            graph,
            idempotency_key,
        )
        return millis(row["created"])

    def held(self, job_id: str, seen_updated: datetime) -> AbstractAsyncContextManager[asyncpg.Connection | None]:
        """The job's row locked while it is as read, or None (core/row_lock.py)."""
        return job_row_held(self.pool, job_id, seen_updated)

    async def save_snapshot(
        self,
        job_id: str,
        status: str,
        progress: float,
        graph: dict,
        events: Sequence[Event] = (),
        conn: asyncpg.Connection | None = None,
    ) -> datetime:
        """The workflow's authoritative state after each change, with the status and data `events` it announces
        (each once, by fingerprint, as a relay hearing them records them); returns when the job was created.

        Progress lands in [the workflow's progress, the graph's ceiling]: reported progress within the
        open work is kept, anything above it (or left from an earlier run) is corrected. A run's step clears the run
        a retry named as replaced (core/retry_rows.py): a run goes on. On `conn` when given (a transaction holding
        the row, see `held`).
        """
        ceiling = max(progress, progress_ceiling(graph))
        return await (conn or self.pool).fetchval(
            """
            WITH job AS (
                INSERT INTO jobs (job_id, status, progress, progress_ceiling, pipeline, last_graph)
                VALUES ($1, $2, $3, $5, $4::jsonb->'context'->>'pipeline', $4::jsonb)
                ON CONFLICT (job_id) DO UPDATE
                   SET status = EXCLUDED.status,
                       progress = LEAST(GREATEST(jobs.progress, EXCLUDED.progress), EXCLUDED.progress_ceiling),
                       progress_ceiling = EXCLUDED.progress_ceiling,
                       last_graph = EXCLUDED.last_graph, updated = now(), retried_run = NULL
                RETURNING created
            ), ev AS (
                INSERT INTO job_events (job_id, status, data, fingerprint, created)
                SELECT $1, e.status, e.data, e.fingerprint, e.created
                FROM unnest($6::text[], $7::jsonb[], $8::text[], $9::timestamptz[])
                     AS e(status, data, fingerprint, created)
                ON CONFLICT (job_id, fingerprint) DO NOTHING
            )
            SELECT created FROM job
            """,
            uuid.UUID(job_id),
            status,
            progress,
            graph,
            ceiling,
            [event.status for event in events],
            [event.data for event in events],
            [event.fingerprint for event in events],
            [event.created for event in events],
        )

    async def apply_event(self, event: Event) -> bool | None:
        """Record one pub/sub message once (a coalesced progress row: raise it to the message's progress). False if
        skipped: already recorded, or a coalesced row that already holds as much; None if the job has no row (none
        yet: its first step writes the row and pushes its first segment at once, or an unknown job).

        Only the workflow decides a job's status (its snapshots): a status message is history, never the job's
        fate. Reported progress raises the job's, up to its ceiling, while the job is not finished.
        """
        row = await self.pool.fetchrow(APPLY_EVENT, *event_args(event))
        if row["event_id"] is not None:
            return True
        return False if row["known"] else None

    async def apply_events(self, events: Sequence[Event]) -> None:
        """`apply_event` for each, in one round trip: asyncpg sends the statements back to back and waits once (and
        PostgreSQL runs them as one transaction). What each did is not told.

        Relays hear the same messages, in the order they were published, and the workflow's steps write some of
        them too (in that order), each holding its rows' locks until it commits. So every writer takes a job's locks
        in one order (`lock_order`), and none waits for another that waits for it. Rows are written in the order
        heard, so events of the same millisecond keep it in their ids."""
        if events:
            rows = sorted((event_args(event) for event in events), key=lock_order)
            await self.pool.executemany(APPLY_EVENT, rows)

    async def delete_expired_events(self, retention_seconds: float, batch: int) -> int:
        """Delete up to `batch` job_events rows of jobs that finished more than `retention_seconds` ago; returns how
        many. A job that is not finished keeps every row; relays deleting at once skip each other's rows."""
        status = await self.pool.execute(
            """
            WITH doomed AS (
                SELECT e.event_id FROM job_events e JOIN jobs j USING (job_id)
                WHERE e.created < now() - make_interval(secs => $1)
                  AND j.updated < now() - make_interval(secs => $1)
                  AND j.status = ANY($2::text[])
                LIMIT $3
                FOR UPDATE OF e SKIP LOCKED FOR SHARE OF j  -- a job run again meanwhile is re-checked, and kept
            )
            DELETE FROM job_events WHERE event_id IN (SELECT event_id FROM doomed)
            """,
            retention_seconds,
            list(jobkeys.TERMINAL),
            batch,
        )
        return int(status.split()[-1])

    async def job_status(self, job_id: str) -> dict | None:
        row = await self.pool.fetchrow("SELECT status, progress FROM jobs WHERE job_id = $1", uuid.UUID(job_id))
        return dict(row) if row else None

    async def job(self, job_id: str) -> dict | None:
        row = await self.pool.fetchrow(
            "SELECT job_id, status, progress, last_graph, created, updated, retried_run FROM jobs WHERE job_id = $1",
            uuid.UUID(job_id),
        )
        return dict(row) if row else None

    async def events(self, job_id: str, limit: int = 50) -> list[dict]:
        """Newest first, by when each event happened (relays may record them in another order)."""
        rows = await self.pool.fetch(
            """
            SELECT event_id, status, progress, data, created FROM job_events
            WHERE job_id = $1 ORDER BY created DESC, event_id DESC LIMIT $2
            """,
            uuid.UUID(job_id),
            limit,
        )
        return [dict(r) for r in rows]

    async def reset_job(self, job_id: str, status: str, progress: float | None) -> None:
        """Set a job's status (and, when given, its progress) exactly: a retry starts from clean state."""
        await self.pool.execute(
            "UPDATE jobs SET status = $2, progress = coalesce($3, progress), updated = now() WHERE job_id = $1",
            uuid.UUID(job_id),
            status,
            progress,
        )

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    async def list_jobs(
        self, limit: int, offset: int, status: str | None = None, pipeline: str | None = None, hidden: tuple = ()
    ) -> tuple[list[dict], int]:
        """A page of jobs, newest first, and how many match in all; `hidden` pipelines are left out."""
        where = """($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR pipeline = $2)
                   AND (pipeline IS NULL OR NOT pipeline = ANY($3::text[]))"""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                f"""SELECT job_id, status, progress, pipeline, created FROM jobs WHERE {where}
                    ORDER BY created DESC, job_id LIMIT $4 OFFSET $5""",
                status,
                pipeline,
                list(hidden),
                limit,
                offset,
            )
            total = await conn.fetchval(f"SELECT count(*) FROM jobs WHERE {where}", status, pipeline, list(hidden))
        return [dict(r) for r in rows], total
