"""Apply migrations/NNNN_*.sql once each, in order, under an advisory lock, recording each."""

from __future__ import annotations

import logging

import asyncpg

from migrations import MIGRATIONS_DIR

log = logging.getLogger(__name__)

# Any fixed 64-bit number; every migrator process takes the same lock.
_LOCK_KEY = 0x5B1B07_0001


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            log.info("applied migration %s", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def migrate_url(database_url: str, timeout: float = 30.0) -> list[str]:
    """Migrate the database at `database_url`, waiting (with backoff) for it to answer."""
    from core.store import connect_pool

    pool = await connect_pool(database_url, timeout=timeout, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await migrate(conn)
    finally:
        await pool.close()
