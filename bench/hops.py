"""Where a paced job's time goes, hop by hop: the median of each step over paced sadtalker jobs, from the job's own
Temporal history (event times), its stream entries (Redis stamps their ids with its clock) and the `completed` the
bench hears on pub/sub. Clocks: one machine, millisecond resolution.

Each job is followed by one of the floor's workflows (bench.floor), timed the same way from its own history.

Run: `.venv/bin/python -m bench.hops [--jobs 20]` (a stack of its own, about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowHandle

from bench.floor import HANDBACK as FLOOR_HANDBACK
from bench.floor import Floor, floor_workers, shape_of_finished
from bench.http_probe import ApiClient
from bench.load import PACED_PAUSE, Finished, api_client, finished_jobs, latencies, run_one, submit
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
# Ours only: the floor's local activity signals its own handback. What the three steps make together, it has too.
OURS_ONLY = ("pushed", "handed_back", "signalled")
HANDOFF_HOPS = [label for label, start, end in HOPS if end in OURS_ONLY]
TOGETHER = [("  the three above together: second task start → handback signalled", "task2_started", "signalled")]


async def _first_entry_ms(redis: aioredis.Redis, stream: str, job_id: str) -> float:
    entries: Any = await redis.xrevrange(stream, count=500)  # newest first: a paced job's entries are among them
    stamps = [float(entry_id.split("-")[0]) for entry_id, fields in entries if fields.get("jobId") == job_id]
    if not stamps:
        raise LookupError(f"no entry of job {job_id} on {stream}")
    return min(stamps)


async def temporal_marks(handle: WorkflowHandle, handback: str) -> dict[str, float]:
    """Milliseconds since the epoch of each mark a finished workflow's own history holds."""
    events = [
        (event.WhichOneof("attributes") or "", event.event_time.ToMilliseconds(), event)
        async for event in handle.fetch_history_events()
    ]

    def nth(kind: str, n: int = 0) -> float:
        return [at for name, at, _ in events if name == f"{kind}_event_attributes"][n]

    signalled = [
        at
        for name, at, event in events
        if name == "workflow_execution_signaled_event_attributes"
        and event.workflow_execution_signaled_event_attributes.signal_name == handback
    ]
    return {
        "started": nth("workflow_execution_started"),
        "task1_started": nth("workflow_task_started"),
        "task1_completed": nth("workflow_task_completed"),
        "activity_started": nth("activity_task_started"),
        "activity_completed": nth("activity_task_completed"),
        "task2_started": nth("workflow_task_started", 1),
        "signalled": signalled[0],
        "task3_started": nth("workflow_task_started", 2),
    }


async def marks_of(client: Client, redis: aioredis.Redis, job_id: str) -> dict[str, float]:
    """Milliseconds since the epoch of each mark of one finished job, from Temporal and Redis."""
    return {
        **await temporal_marks(client.get_workflow_handle(job_id), HANDBACK),
        "pushed": await _first_entry_ms(redis, BRIDGE.data_stream, job_id),
        "handed_back": await _first_entry_ms(redis, BRIDGE.control_stream, job_id),
    }


async def measure_hops(
    api_url: str, temporal: str, redis_url: str, jobs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each hop's milliseconds over `jobs` sadtalker jobs, paced as the bench's paced jobs are, and the same of the
    floor's workflows (bench.floor), one after each job: (ours, the floor's; only the hops the floor has too)."""
    client = await Client.connect(temporal)
    redis = aioredis.from_url(redis_url, decode_responses=True)
    ours: dict[str, list[float]] = {label: [] for label, _, _ in HOPS}
    floor: dict[str, list[float]] = {label: [] for label, _, end in HOPS if end not in OURS_ONLY}
    floor |= {label: [] for label, _, _ in TOGETHER}
    try:
        async with finished_jobs(redis_url) as finished, api_client(api_url) as api:
            job_id, _ = await run_one(api, finished)  # its history gives the floor its shape
            shape = await shape_of_finished(client.get_workflow_handle(job_id))
            async with floor_workers(temporal, shape) as side:
                await latencies(api, finished, 5, 0.0)  # warm up connections and caches
                await side.batch(3)
                for _ in range(jobs):
                    await asyncio.sleep(PACED_PAUSE)
                    _add(ours, await _one_job(api, finished, client, redis))
                    await asyncio.sleep(PACED_PAUSE)
                    _add(floor, await _one_floor(side))
    finally:
        await redis.aclose()
    return ours, floor


def _add(hops: dict[str, list[float]], marks: dict[str, float]) -> None:
    for label, start, end in HOPS + TOGETHER:
        if label in hops:
            hops[label].append(marks[end] - marks[start])


async def _one_job(api: ApiClient, finished: Finished, client: Client, redis: aioredis.Redis) -> dict[str, float]:
    posted_at = time.time()
    job_id, posted = await submit(api)
    completed = await finished.wait(job_id)
    marks = await marks_of(client, redis, job_id)
    return {**marks, "posted": posted_at * 1000, "completed": (posted_at + completed - posted) * 1000}


async def _one_floor(floor: Floor) -> dict[str, float]:
    """The floor's marks: started (client side) → its result returned, where ours ends at `completed` heard."""
    started_at = time.time()
    handle = await floor.start()
    await handle.result()
    ended_at = time.time()
    return {
        **await temporal_marks(handle, FLOOR_HANDBACK),
        "posted": started_at * 1000,
        "completed": ended_at * 1000,
    }


def table(ours: dict[str, list[float]], floor: dict[str, list[float]]) -> Table:
    title = f"A paced sadtalker job, hop by hop, beside the floor's workflow ({len(ours[HOPS[0][0]])} each, ms)"
    out = Table(title=title)
    for column in ("hop", "p50", "min", "max", "floor p50"):
        out.add_column(column, justify="left" if column == "hop" else "right")

    def row(label: str, values: list[float]) -> None:
        theirs = f"{statistics.median(floor[label]):.1f}" if floor.get(label) else "—"
        out.add_row(label, f"{statistics.median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}", theirs)

    for label, values in ours.items():
        row(label, values)
    for label, _, _ in TOGETHER:
        together = [sum(parts) for parts in zip(*(ours[hop] for hop in HANDOFF_HOPS), strict=True)]
        row(label, together)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="paced jobs to time")
    jobs = parser.parse_args().jobs
    with bench_stack() as stack:
        ours, floor = asyncio.run(measure_hops(stack.api_url, stack.temporal_address, stack.redis_url, jobs))
    Console().print(table(ours, floor))


if __name__ == "__main__":
    main()
