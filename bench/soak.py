"""What each job leaves behind: Redis memory and PostgreSQL bytes per job after a soak of many jobs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import h11
import redis.asyncio as aioredis

from bench.http_probe import ApiClient
from bench.load import Finished, api_client, run_one
from workflows.status import JobStatus

# Every table of ours with its indexes and TOAST (the migrations create them in `public`).
TABLE_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
"""
SETTLE_SECONDS = 3.0  # for the relay to write the last events


@dataclass
class SoakFigures:
    jobs: int
    seconds: float
    failed: int
    redis_bytes: int
    table_bytes: int
    database_bytes: int
    window: float = 0.0

    @property
    def redis_bytes_per_job(self) -> float:
        return self.redis_bytes / self.jobs

    @property
    def pg_bytes_per_job(self) -> float:
        return self.table_bytes / self.jobs


async def _sizes(redis: aioredis.Redis, database_url: str) -> tuple[int, int, int]:
    memory = await redis.info("memory")
    pg = await asyncpg.connect(database_url)
    try:
        tables = await pg.fetchval(TABLE_BYTES)
        database = await pg.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await pg.close()
    return int(memory["used_memory"]), int(tables), int(database)


async def soak(
    api_url: str, redis_url: str, database_url: str, finished: Finished, jobs: int, window: float, in_flight: int = 40
) -> SoakFigures:
    """`jobs` sadtalker jobs, `in_flight` at a time; the growth of Redis and PostgreSQL divided by `jobs`, once the
    retention `window` (0: the shipped settings, hours long) has passed after the last job."""
    redis = aioredis.from_url(redis_url)
    try:
        before = await _sizes(redis, database_url)
        gate = asyncio.Semaphore(in_flight)
        outcomes: list[str] = []

        async def one(api: ApiClient) -> None:
            async with gate:
                try:
                    job_id, _ = await run_one(api, finished)
                    outcomes.append(finished.outcome[job_id])
                except (RuntimeError, OSError, TimeoutError, h11.ProtocolError) as exc:  # an error answer, a lost link
                    outcomes.append(type(exc).__name__)

        started = time.perf_counter()
        async with api_client(api_url, in_flight) as api:
            await asyncio.gather(*(one(api) for _ in range(jobs)))
        seconds = time.perf_counter() - started
        await asyncio.sleep(SETTLE_SECONDS + window)
        after = await _sizes(redis, database_url)
    finally:
        await redis.aclose()
    redis_bytes, table_bytes, database_bytes = (a - b for a, b in zip(after, before, strict=True))
    failed = sum(outcome != JobStatus.COMPLETED for outcome in outcomes)
    return SoakFigures(jobs, seconds, failed, redis_bytes, table_bytes, database_bytes, window)
