"""Orchestration figures of a real `spinbot dev` stack, beside those of the system it replaces.

Starts `spinbot dev` on free ports in a temporary folder (simulated data plane with zero-length
runs, an Ollama-speaking peer that answers at once), then measures over HTTP:
  - latency: POST /api/jobs (sadtalker) to `completed` on pub/sub, one job at a time;
  - throughput: 40 jobs submitted at once, until the last completes;
  - status lookups: GET /api/status while those 40 run.
Run: `make bench` (or `.venv/bin/python -m bench.orchestration`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from spinbot.services import free_port, popen
from tests.peers import OllamaPeer

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "bench"}}}
BASELINE = {"latency": "~750 ms orchestration", "throughput": "0.40 jobs/s", "status": "queued ~200 ms"}
TARGET = {"latency": "<= 75 ms", "throughput": ">= 20 jobs/s", "status": "p99 <= 10 ms"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Finished:
    """Completion times of jobs, from the status channels (push, no polling)."""

    def __init__(self, redis: aioredis.Redis):
        self.redis = redis
        self.done: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future] = {}

    async def listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.psubscribe("channel:status:*")
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message["type"] != "pmessage":
                continue
            payload = json.loads(message["data"])
            if payload.get("status") in ("completed", "failed"):
                self.done[payload["jobId"]] = time.perf_counter()
                waiter = self.waiters.pop(payload["jobId"], None)
                if waiter and not waiter.done():
                    waiter.set_result(payload["status"])

    async def wait(self, job_id: str, timeout: float = 60) -> None:
        if job_id not in self.done:
            self.waiters[job_id] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.waiters[job_id], timeout)


POSTS: list[float] = []


async def submit(api: httpx.AsyncClient) -> tuple[str, float]:
    started = time.perf_counter()
    reply = await api.post("/api/jobs", json=SADTALKER)
    reply.raise_for_status()
    POSTS.append(time.perf_counter() - started)
    return reply.json()["jobId"], started


async def measure(api_url: str, redis_url: str) -> dict:
    redis = aioredis.from_url(redis_url, decode_responses=True)
    finished = Finished(redis)
    listening = asyncio.create_task(finished.listen())
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as api:
        for _ in range(3):  # warm up connections and caches
            job_id, _ = await submit(api)
            await finished.wait(job_id)
        latencies = []
        POSTS.clear()
        for _ in range(20):
            job_id, started = await submit(api)
            await finished.wait(job_id)
            latencies.append(finished.done[job_id] - started)

        sequential_posts = list(POSTS)
        paced = []  # Temporal's dev server slows task pickup when jobs come back to back (bench.temporal_floor)
        for _ in range(10):
            await asyncio.sleep(0.5)
            job_id, started = await submit(api)
            await finished.wait(job_id)
            paced.append(finished.done[job_id] - started)
        started = time.perf_counter()
        jobs = [job for job, _ in await asyncio.gather(*(submit(api) for _ in range(40)))]
        lookups: list[float] = []

        async def look_up_status():
            while not all(job in finished.done for job in jobs):
                t0 = time.perf_counter()
                (await api.get(f"/api/status/{jobs[len(lookups) % len(jobs)]}")).raise_for_status()
                lookups.append(time.perf_counter() - t0)

        await asyncio.gather(look_up_status(), *(finished.wait(job) for job in jobs))
        elapsed = max(finished.done[job] for job in jobs) - started
    listening.cancel()
    await redis.aclose()
    return {
        "latencies": latencies,
        "paced": paced,
        "throughput": len(jobs) / elapsed,
        "lookups": lookups,
        "posts": sequential_posts,
    }


def start_stack(data_dir: Path, llm_url: str) -> tuple[subprocess.Popen, str, str]:
    ports = {name: free_port() for name in ("api", "redis", "temporal", "ui", "metrics")}
    env = dict(os.environ, SPINBOT_LLM_ENDPOINT=llm_url, SPINBOT_LOG_FORMAT="json")
    cmd = [
        sys.executable,
        "-m",
        "spinbot",
        "dev",
        "--data-dir",
        str(data_dir),
        "--sim-seconds",
        "0",
        "--api-port",
        str(ports["api"]),
        "--redis-port",
        str(ports["redis"]),
        "--temporal-port",
        str(ports["temporal"]),
        "--ui-port",
        str(ports["ui"]),
        "--metrics-port",
        str(ports["metrics"]),
    ]
    proc = popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout or ():
        if "ready" in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("spinbot dev did not become ready")
    else:
        raise RuntimeError(f"spinbot dev exited with {proc.wait()}")
    return proc, f"http://127.0.0.1:{ports['api']}", f"redis://127.0.0.1:{ports['redis']}/0"


def report(figures: dict) -> None:
    table = Table(title="sadtalker orchestration, zero-time data plane (one run, this machine)")
    for column in ("measure", "this system", "system replaced", "target"):
        table.add_column(column)
    lat, looks = figures["latencies"], figures["lookups"]
    table.add_row(
        "POST to completed back to back, p50 / p90",
        f"{percentile(lat, 0.5) * 1000:.0f} / {percentile(lat, 0.9) * 1000:.0f} ms",
        BASELINE["latency"],
        TARGET["latency"],
    )
    paced = figures["paced"]
    table.add_row(
        "  the same, 0.5 s apart",
        f"{percentile(paced, 0.5) * 1000:.0f} / {percentile(paced, 0.9) * 1000:.0f} ms",
        BASELINE["latency"],
        TARGET["latency"],
    )
    table.add_row(
        "throughput, 40 queued", f"{figures['throughput']:.1f} jobs/s", BASELINE["throughput"], TARGET["throughput"]
    )
    table.add_row(
        "GET /api/status under load, p50 / p99",
        f"{percentile(looks, 0.5) * 1000:.1f} / {percentile(looks, 0.99) * 1000:.1f} ms ({len(looks)} lookups)",
        BASELINE["status"],
        TARGET["status"],
    )
    Console().print(table)
    print(f"of which POST /api/jobs itself, p50: {percentile(figures['posts'], 0.5) * 1000:.0f} ms")
    print(
        f"ratio (old/new): latency {0.75 / statistics.median(paced):.1f}x paced,"
        f" {0.75 / statistics.median(lat):.1f}x back to back;"
        f" throughput {figures['throughput'] / 0.40:.0f}x"
    )


def main() -> None:
    with OllamaPeer() as llm, tempfile.TemporaryDirectory(prefix="spinbot-bench-") as data_dir:
        proc, api_url, redis_url = start_stack(Path(data_dir), llm.url)
        try:
            report(asyncio.run(measure(api_url, redis_url)))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
