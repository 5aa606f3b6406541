"""The PostgreSQL pool releases connections without asyncpg's reset query (a round trip per release, for session
state nothing here sets), and still never hands out a connection with a transaction left open."""

from __future__ import annotations

import asyncpg

from core.store import connect_pool


async def test_a_release_sends_no_reset_query(database_url):
    pool = await connect_pool(database_url, min_size=1, max_size=1)
    observer = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SELECT 'last query before release'")
        # What that backend ran last, as another session sees it: the reset query would come after ours.
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
        assert last == "SELECT 'last query before release'", last
    finally:
        await observer.close()
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(database_url):
    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
            await conn.execute("DROP TABLE pool_probe")
    finally:
        await pool.close()
