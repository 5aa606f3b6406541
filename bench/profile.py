"""Where the time goes under load: py-spy samples the API, the worker and the relay of a `spinbot dev` stack
while queued sadtalker jobs run and GET /api/status is looked up, then prints each role's top entries.

Run: `.venv/bin/python -m bench.profile [--seconds 20] [--out DIR]`. The raw collapsed stacks are kept in DIR
(default: a temporary folder, printed), for flame graphs (`flamegraph.pl`, speedscope.app).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.load import api_client, finished_jobs, latencies, throughput
from bench.stack import BenchStack, bench_stack
from tests.dev_process import dev_children

ROLES = ("api", "worker", "relay")
OURS = tuple(f"({package}/" for package in ("api", "core", "handoff", "activities", "workflows"))
# Leaf frames of a thread that waits (the event loop in epoll, idle pool threads): py-spy samples them too.
IDLE = (
    "Runner.run (asyncio/runners.py",
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py",
    "WorkerThread.run (anyio",
)


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy in the background on one process: collapsed stacks, idle threads left out."""
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_entries(raw: Path, count: int = 12) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, functions by own time, our functions by time inside them) from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames, n = stack.split(";"), int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            if any(part in frame for part in OURS):
                inside[frame] += n
    busy = [(f, n) for f, n in own.most_common() if not any(idle in f for idle in IDLE)]
    return total, busy[:count], inside.most_common(count)


async def load(stack: BenchStack, seconds: float) -> int:
    """Queued jobs in waves of 40 with status look-ups, until `seconds` have passed; how many jobs ran."""
    jobs = 0
    async with finished_jobs(stack.redis_url) as finished, api_client(stack.api_url) as api:
        await latencies(api, finished, 3, 0.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await throughput(api, finished, 40)
            jobs += 40
    return jobs


def report(role: str, raw: Path, console: Console) -> None:
    total, busy, inside = top_entries(raw)
    table = Table(title=f"{role}: {total} samples at 200/s (idle waiting left out of the first column)")
    table.add_column("own time: function (file:line)")
    table.add_column("%", justify="right")
    table.add_column("time inside: our function")
    table.add_column("%", justify="right")
    for i in range(max(len(busy), len(inside))):
        left = busy[i] if i < len(busy) else ("", 0)
        right = inside[i] if i < len(inside) else ("", 0)
        table.add_row(
            left[0][:90],
            f"{100 * left[1] / total:.1f}" if left[1] else "",
            right[0][:90],
            f"{100 * right[1] / total:.1f}" if right[1] else "",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="spinbot-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    with bench_stack() as stack:
        children = dev_children(stack.proc.pid)
        recorders = {role: record(children[role], args.seconds, out / f"{role}.txt") for role in ROLES}
        jobs = asyncio.run(load(stack, args.seconds))
        for recorder in recorders.values():
            recorder.wait(60)
    console.print(f"{jobs} sadtalker jobs in {args.seconds:.0f} s; collapsed stacks in {out}")
    for role in ROLES:
        report(role, out / f"{role}.txt", console)


if __name__ == "__main__":
    main()
