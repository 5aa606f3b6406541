"""Our sadtalker jobs over HTTP: POST /api/jobs to `completed` (on pub/sub, as the workflow announces it), one at a
time back to back and paced, then many queued at once while GET /api/status (and GET /health, beside it) is timed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bench.floor import Floor, FloorFigures
from bench.http_probe import ApiClient, HttpProbe
from workflows.names import CONTROL_SOURCE
from workflows.status import JobStatus

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "bench"}}}
ENDINGS = (JobStatus.COMPLETED, JobStatus.FAILED)
STATUS_EVERY = 0.02  # GET /api/status under load: 50 lookups a second
PACED_PAUSE = 0.5  # seconds between paced jobs (and paced floor workflows)


class Finished:
    """When each job ended, from its status channel: the workflow's own announcement (no polling)."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.outcome: dict[str, str] = {}
        self.waiters: dict[str, asyncio.Future] = {}

    async def listen(self, redis: aioredis.Redis, ready: asyncio.Event) -> None:
        pubsub = redis.pubsub()
        await pubsub.psubscribe("channel:status:*")
        ready.set()
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            payload = json.loads(message["data"])
            # A data plane's `completed` ends one segment only; the workflow's ends the job.
            if payload.get("status") in ENDINGS and payload.get("source") == CONTROL_SOURCE:
                job_id = payload["jobId"]
                self.done.setdefault(job_id, time.perf_counter())
                self.outcome.setdefault(job_id, payload["status"])
                waiter = self.waiters.pop(job_id, None)
                if waiter and not waiter.done():
                    waiter.set_result(None)

    async def wait(self, job_id: str, timeout: float = 120) -> float:
        if job_id not in self.done:
            waiter = self.waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
            async with asyncio.timeout(timeout):
                await asyncio.shield(waiter)
        return self.done[job_id]


@contextlib.asynccontextmanager
async def finished_jobs(redis_url: str) -> AsyncIterator[Finished]:
    finished, ready = Finished(), asyncio.Event()
    redis = aioredis.from_url(redis_url, decode_responses=True)
    listening = asyncio.create_task(finished.listen(redis, ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield finished
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await redis.aclose()


def api_client(api_url: str, connections: int = 100) -> ApiClient:
    return ApiClient(api_url, connections)


async def submit(api: ApiClient, request: dict | None = None) -> tuple[str, float]:
    started = time.perf_counter()
    status, body = await api.post_json("/api/jobs", request or SADTALKER)
    if status != 200:
        raise RuntimeError(f"POST /api/jobs: {status} {body[:200]!r}")
    return json.loads(body)["jobId"], started


async def run_one(api: ApiClient, finished: Finished) -> tuple[str, float]:
    """(job id, seconds from POST to completed) of one sadtalker job."""
    job_id, started = await submit(api)
    return job_id, await finished.wait(job_id) - started


@dataclass
class Lookups:
    """Seconds each GET took while queued jobs ran."""

    status: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)


@dataclass
class LoadFigures:
    back_to_back: list[float] = field(default_factory=list)
    paced: list[float] = field(default_factory=list)
    jobs_per_s: float = 0.0
    queued: int = 0
    rounds: int = 1
    status_lookups: list[float] = field(default_factory=list)
    health_lookups: list[float] = field(default_factory=list)
    failed: int = 0


async def latencies(api: ApiClient, finished: Finished, runs: int, pause: float) -> list[float]:
    times = []
    for _ in range(runs):
        if pause:
            await asyncio.sleep(pause)
        times.append((await run_one(api, finished))[1])
    return times


async def throughput(api: ApiClient, finished: Finished, queued: int) -> tuple[float, Lookups, int]:
    """`queued` jobs submitted at once: (jobs/s until the last ends, GET /api/status and GET /health times
    meanwhile, failed)."""
    started = time.perf_counter()
    jobs = [job for job, _ in await asyncio.gather(*(submit(api) for _ in range(queued)))]
    lookups = Lookups()

    async def look_up(times: list[float], path_of, offset: float = 0.0) -> None:
        # Paced, as pollers are: a loop asking as fast as it can would add its own load (it took about a quarter
        # of these two cores, between this client and the API) to the load it measures under.
        probe = HttpProbe(api.base_url)
        await asyncio.sleep(offset)
        try:
            while not all(job in finished.done for job in jobs):
                t0 = time.perf_counter()
                await probe.get(path_of(len(times)))
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(max(0.0, STATUS_EVERY - (time.perf_counter() - t0)))
        finally:
            await probe.aclose()

    await asyncio.gather(
        look_up(lookups.status, lambda n: f"/api/status/{jobs[n % len(jobs)]}"),
        # A request that does nothing (no Redis, no PostgreSQL), between the status lookups: what any answer from
        # the API takes on these cores under this load, the floor the status lookup stands on.
        look_up(lookups.health, lambda n: "/health", offset=STATUS_EVERY / 2),
        *(finished.wait(job) for job in jobs),
    )
    elapsed = max(finished.done[job] for job in jobs) - started
    failed = sum(finished.outcome[job] != JobStatus.COMPLETED for job in jobs)
    return queued / elapsed, lookups, failed


async def measure_load(
    api_url: str, finished: Finished, floor: Floor, queued: int, runs: int = 20, rounds: int = 2
) -> tuple[LoadFigures, FloorFigures]:
    """Our jobs and the floor's workflows side by side: paced one of ours, then one of the floor's, `runs` times;
    ours back to back; then `rounds` of `queued` at once, ours and the floor's in turn. Each rate is the rounds'
    jobs over their summed time."""
    figures, floor_figures = LoadFigures(queued=queued, rounds=rounds), FloorFigures()
    async with api_client(api_url) as api:
        await latencies(api, finished, 3, 0.0)  # warm up connections and caches, ours and the floor's
        await floor.batch(3)
        for _ in range(runs):
            figures.paced += await latencies(api, finished, 1, PACED_PAUSE)
            await asyncio.sleep(PACED_PAUSE)
            floor_figures.paced.append(await floor.one())
        figures.back_to_back = await latencies(api, finished, runs, 0.0)
        ours, theirs = [], []
        for _ in range(rounds):
            await asyncio.sleep(1.0)  # let what ran before settle
            rate, lookups, failed = await throughput(api, finished, queued)
            ours.append(queued / rate)
            figures.status_lookups += lookups.status
            figures.health_lookups += lookups.health
            figures.failed += failed
            await asyncio.sleep(1.0)
            theirs.append(await floor.batch(queued))
    figures.jobs_per_s = queued * rounds / sum(ours)
    floor_figures.jobs_per_s = queued * rounds / sum(theirs)
    return figures, floor_figures
