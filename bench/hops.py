"""Where a paced job's time goes, hop by hop: the median of each step over paced sadtalker jobs, from the job's own
Temporal history (event times), its stream entries (Redis stamps their ids with its clock) and the `completed` the
bench hears on pub/sub. Clocks: one machine, millisecond resolution.

Run: `.venv/bin/python -m bench.hops [--jobs 20]` (a stack of its own, about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from bench.load import PACED_PAUSE, Finished, api_client, finished_jobs, latencies, submit
from bench.stack import bench_stack
from core.contracts import contracts
from workflows.names import HANDBACK

BRIDGE = contracts().bridge
# (what the step is, from mark, to mark), consecutive: together they make the last; the marks are named in `marks_of`.
HOPS = [
    ("POST → workflow started (API, start call)", "posted", "started"),
    ("first workflow task waits", "started", "task1_started"),
    ("first workflow task (its persistence step inside)", "task1_started", "task1_completed"),
    ("the script activity waits", "task1_completed", "activity_started"),
    ("the script activity runs", "activity_started", "activity_completed"),
    ("second workflow task waits", "activity_completed", "task2_started"),
    ("second task: start → segment pushed to process:data", "task2_started", "pushed"),
    ("data plane: process:data → process:control", "pushed", "handed_back"),
    ("relay: process:control → handback signalled", "handed_back", "signalled"),
    ("last workflow task waits", "signalled", "task3_started"),
    ("last task → `completed` heard on pub/sub", "task3_started", "completed"),
    ("POST → completed", "posted", "completed"),
]


async def _first_entry_ms(redis: aioredis.Redis, stream: str, job_id: str) -> float:
    entries: Any = await redis.xrevrange(stream, count=500)  # newest first: a paced job's entries are among them
    stamps = [float(entry_id.split("-")[0]) for entry_id, fields in entries if fields.get("jobId") == job_id]
    if not stamps:
        raise LookupError(f"no entry of job {job_id} on {stream}")
    return min(stamps)


async def marks_of(client: Client, redis: aioredis.Redis, job_id: str) -> dict[str, float]:
    """Milliseconds since the epoch of each mark of one finished job, from Temporal and Redis."""
    events = [
        (event.WhichOneof("attributes") or "", event.event_time.ToMilliseconds(), event)
        async for event in client.get_workflow_handle(job_id).fetch_history_events()
    ]

    def nth(kind: str, n: int = 0) -> float:
        return [at for name, at, _ in events if name == f"{kind}_event_attributes"][n]

    signalled = [
        at
        for name, at, event in events
        if name == "workflow_execution_signaled_event_attributes"
        and event.workflow_execution_signaled_event_attributes.signal_name == HANDBACK
    ]
    return {
        "started": nth("workflow_execution_started"),
        "task1_started": nth("workflow_task_started"),
        "task1_completed": nth("workflow_task_completed"),
        "activity_started": nth("activity_task_started"),
        "activity_completed": nth("activity_task_completed"),
        "task2_started": nth("workflow_task_started", 1),
        "pushed": await _first_entry_ms(redis, BRIDGE.data_stream, job_id),
        "handed_back": await _first_entry_ms(redis, BRIDGE.control_stream, job_id),
        "signalled": signalled[0],
        "task3_started": nth("workflow_task_started", 2),
    }


async def measure_hops(api_url: str, temporal: str, redis_url: str, jobs: int) -> dict[str, list[float]]:
    """Each hop's milliseconds over `jobs` sadtalker jobs, paced as the bench's paced jobs are."""
    client = await Client.connect(temporal)
    redis = aioredis.from_url(redis_url, decode_responses=True)
    hops: dict[str, list[float]] = {label: [] for label, _, _ in HOPS}
    try:
        async with finished_jobs(redis_url) as finished, api_client(api_url) as api:
            await latencies(api, finished, 5, 0.0)  # warm up connections and caches
            for _ in range(jobs):
                await asyncio.sleep(PACED_PAUSE)
                marks = await _one_job(api, finished, client, redis)
                for label, start, end in HOPS:
                    hops[label].append(marks[end] - marks[start])
    finally:
        await redis.aclose()
    return hops


async def _one_job(
    api: httpx.AsyncClient, finished: Finished, client: Client, redis: aioredis.Redis
) -> dict[str, float]:
    posted_at = time.time()
    job_id, posted = await submit(api)
    completed = await finished.wait(job_id)
    marks = await marks_of(client, redis, job_id)
    return {**marks, "posted": posted_at * 1000, "completed": (posted_at + completed - posted) * 1000}


def table(hops: dict[str, list[float]]) -> Table:
    out = Table(title=f"A paced sadtalker job, hop by hop ({len(next(iter(hops.values())))} jobs, ms)")
    for column in ("hop", "p50", "min", "max"):
        out.add_column(column, justify="left" if column == "hop" else "right")
    for label, values in hops.items():
        out.add_row(label, f"{statistics.median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="paced jobs to time")
    jobs = parser.parse_args().jobs
    with bench_stack() as stack:
        hops = asyncio.run(measure_hops(stack.api_url, stack.temporal_address, stack.redis_url, jobs))
    Console().print(table(hops))


if __name__ == "__main__":
    main()
