"""Why bare workflows slow down back to back on Temporal's dev server, and which server setting moves it.

For each candidate setting: a fresh dev server (SQLite file, as `spinbot dev` runs it) with its Prometheus metrics
on, `--runs` bare workflows one after another, and per run the milliseconds; then, from the server's own metrics,
how long history's transfer-queue tasks (the ones that hand workflow and activity tasks to matching) waited to be
loaded, and the tasks' schedule-to-start time.
Run: `.venv/bin/python -m bench.back_to_back [--runs 30] [--shape sadtalker] [--only NAME]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.worker import Worker

from bench.floor import FLOOR_ACTIVITIES, FLOOR_WORKFLOWS, FloorActivities, FloorWorkflow, Shape
from spinbot.dev import DEV_TEMPORAL_CONFIG
from spinbot.ports import free_port
from spinbot.services import Child, _bin, popen, start_temporal, wait_for_port

SHAPES = {"two-activities": Shape(2, 0, 0, 0), "sadtalker": Shape(1, 3, 1, 1)}
TRANSFER = ("TransferActiveTaskWorkflowTask", "TransferActiveTaskActivity")
SETTLED = 10  # runs after which the step has happened (it comes after 5-8)
STARTED = ("RecordWorkflowTaskStarted", "RecordActivityTaskStarted")


@dataclass
class Candidate:
    name: str
    dynamic_config: dict[str, object] = field(default_factory=dict)
    cached_workflows: int = 1000  # the worker's cache (the SDK's default); 0 turns sticky queues off
    in_memory: bool = False  # the dev server without --db-filename: SQLite in memory


CANDIDATES = [
    Candidate("dev server as shipped"),
    Candidate("SQLite in memory", in_memory=True),
    Candidate(
        "one task-queue partition",
        {"matching.numTaskqueueReadPartitions": 1, "matching.numTaskqueueWritePartitions": 1},
    ),
    Candidate("matching long poll 5s", {"matching.longPollExpirationInterval": "5s"}),
    Candidate("frontend.rps 10000", {"frontend.rps": 10000, "frontend.namespaceRPS": 10000}),
    Candidate("search attributes cache refresh off", {"system.forceSearchAttributesCacheRefreshOnRead": False}),
    Candidate("no sticky queue (worker cache 0)", cached_workflows=0),
    Candidate("transfer queue poll 5/s", {"history.transferProcessorMaxPollRPS": 5}),
    Candidate("transfer queue poll 1000/s", {"history.transferProcessorMaxPollRPS": 1000}),
    Candidate("spinbot dev (DEV_TEMPORAL_CONFIG)", DEV_TEMPORAL_CONFIG),
]


def scrape(metrics_url: str) -> str:
    return httpx.get(metrics_url, timeout=10).text


def histograms(text: str) -> dict[tuple[str, str], float]:
    """{(metric sample, operation): value} of the histograms' sums and counts."""
    values: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                values[sample.name, sample.labels.get("operation", "")] += sample.value
    return values


def mean_ms(before: dict, after: dict, metric: str, operations: tuple[str, ...]) -> float:
    total = sum(after[f"{metric}_sum", op] - before[f"{metric}_sum", op] for op in operations)
    count = sum(after[f"{metric}_count", op] - before[f"{metric}_count", op] for op in operations)
    return total / count * 1000 if count else float("nan")


def start_server(candidate: Candidate, data_dir: Path, metrics: int):
    port = free_port()
    if not candidate.in_memory:
        server = start_temporal(data_dir, port, None, dynamic_config=candidate.dynamic_config, metrics_port=metrics)
        return server.url, server.stop
    cmd = [_bin("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    proc = popen([*cmd, "--metrics-port", str(metrics), "--log-level", "error"], stdout=subprocess.DEVNULL)
    wait_for_port(port, proc, "Temporal dev server")
    return f"127.0.0.1:{port}", Child("temporal", proc).stop


async def connect(address: str, timeout: float = 30) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:  # "Frontend is not healthy yet" for a moment after the port opens
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def back_to_back(address: str, metrics_url: str, candidate: Candidate, shape: Shape, runs: int) -> dict:
    client = await connect(address)
    floor = FloorActivities(client)
    async with (
        Worker(
            client,
            task_queue=FLOOR_WORKFLOWS,
            workflows=[FloorWorkflow],
            activities=[floor.sync],
            max_cached_workflows=candidate.cached_workflows,
        ),
        Worker(client, task_queue=FLOOR_ACTIVITIES, activities=[floor.work]),
    ):
        await client.execute_workflow(FloorWorkflow.run, shape, id=str(uuid.uuid4()), task_queue=FLOOR_WORKFLOWS)
        await asyncio.sleep(1.0)  # start every candidate from a rested server
        times: list[float] = []
        for run in range(runs):
            if run == SETTLED:
                # The server's figures over the settled runs only: fetched aside (a pause would refill the limiter),
                # parsed at the end (parsing here would take the worker's CPU).
                reading = asyncio.create_task(asyncio.to_thread(scrape, metrics_url))
            started = time.perf_counter()
            await client.execute_workflow(FloorWorkflow.run, shape, id=str(uuid.uuid4()), task_queue=FLOOR_WORKFLOWS)
            times.append((time.perf_counter() - started) * 1000)
        before, after = histograms(await reading), histograms(scrape(metrics_url))
    transfer = [op for _, op in after if op.startswith("TransferActiveTask")]
    tasks = sum(after["task_latency_load_count", op] - before["task_latency_load_count", op] for op in set(transfer))
    return {
        "times": times,
        "tasks": tasks / (runs - SETTLED),
        "load_ms": mean_ms(before, after, "task_latency_load", TRANSFER),
        "start_ms": mean_ms(before, after, "task_schedule_to_start_latency", STARTED),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.back_to_back", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help=f"more than {SETTLED}")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="two-activities")
    parser.add_argument("--only", help="run only the candidates whose name contains this")
    args = parser.parse_args()
    if args.runs <= SETTLED:
        parser.error(f"--runs must be more than {SETTLED}")
    print(f"{args.runs} bare workflows back to back ({args.shape}: {SHAPES[args.shape].describe()})")
    print("medians of runs 1-5 and 11+; over runs 11+, from the server's metrics: transfer tasks per run, the mean")
    print("time each waited to be loaded (task_latency_load) and the tasks' schedule-to-start time")
    header = ("candidate", "runs 1-5", "runs 11+", "tasks", "load", "sched→start", "per run (ms)")
    print(f"{header[0]:38} {header[1]:>9} {header[2]:>9} {header[3]:>5} {header[4]:>8} {header[5]:>11}  {header[6]}")
    for candidate in CANDIDATES:
        if args.only and args.only not in candidate.name:
            continue
        metrics_port = free_port()
        with tempfile.TemporaryDirectory(prefix="spinbot-b2b-") as data_dir:
            address, stop = start_server(candidate, Path(data_dir), metrics_port)
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                found = asyncio.run(back_to_back(address, url, candidate, SHAPES[args.shape], args.runs))
            finally:
                stop()
        times = found["times"]
        print(
            f"{candidate.name:38} {statistics.median(times[:5]):7.0f}ms {statistics.median(times[SETTLED:]):7.0f}ms"
            f" {found['tasks']:5.1f} {found['load_ms']:6.1f}ms {found['start_ms']:9.1f}ms  {[round(t) for t in times]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
