"""A job's row held while a relay records something about the job that its row does not say yet.

A relay that records a job's end outside its workflow (handoff/stranded.py, handoff/unstarted.py) may tell Redis and
clients before it commits the row, which marks the work done. Two relays, or a relay and a retry, could each read
the row, then each act. Under the row's lock, taken only if the row is still as read, one acts; the other skips the
row (SKIP LOCKED) or, once the row has changed, finds it so, and a retry waiting on the lock finds the job taken.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg


@contextlib.asynccontextmanager
async def job_row_held(
    pool: asyncpg.Pool, job_id: str, seen_updated: datetime
) -> AsyncIterator[asyncpg.Connection | None]:
    """A transaction holding the job's row if the row is as read (every write of a row sets its `updated`) and no
    other holds it; None otherwise. Write the row on the connection given, before the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        held = await conn.fetchval(
            "SELECT true FROM jobs WHERE job_id = $1 AND updated = $2 FOR UPDATE SKIP LOCKED",
            uuid.UUID(job_id),
            seen_updated,
        )
        yield conn if held else None
