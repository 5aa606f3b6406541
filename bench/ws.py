"""WebSocket fan-out: many clients of /ws subscribed over a few running jobs; from the workflow's `completed` publish
(as our own Redis subscriber sees it) to its arrival at each client, and the API's memory meanwhile.

The clients live in a few processes of their own (bench.ws_group), each with its own event loop; arrival times are
`time.perf_counter()`, one monotonic clock for every process on the machine."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from bench.load import Finished, api_client, submit
from bench.stack import BenchStack, rss_mb
from bench.ws_group import run_group

CLIENTS_PER_PROCESS = 250


@dataclass
class WsFigures:
    clients: int
    jobs: int
    processes: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per client that got `completed`
    dropped: int = 0  # could not connect or subscribe, or never got `completed`
    late: int = 0  # subscribed only after its job had ended (not measured, not dropped)
    api_rss_mb: float = 0.0
    hold_s: float = 0.0


async def _replies(groups: list[tuple[Connection, BaseProcess]], kind: str, timeout: float) -> list:
    """Each group's next message, which must be `kind`; a group that exits instead fails the phase at once."""

    def receive(pipe: Connection, process: BaseProcess):
        deadline = time.monotonic() + timeout
        while not pipe.poll(0.5):
            if not process.is_alive():
                raise RuntimeError(f"a client group exited with code {process.exitcode} before {kind!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"a client group sent no {kind!r} within {timeout:.0f}s")
        return pipe.recv()

    loop = asyncio.get_running_loop()
    messages = await asyncio.gather(*(loop.run_in_executor(None, receive, *group) for group in groups))
    assert all(got == kind for got, _ in messages), messages
    return [body for _, body in messages]


async def measure_ws(stack: BenchStack, finished: Finished, clients: int = 1000, jobs: int = 10) -> WsFigures:
    figures = WsFigures(clients, jobs, processes=math.ceil(clients / CLIENTS_PER_PROCESS))
    api_pid = stack.pid("api")
    spawn = multiprocessing.get_context("spawn")
    groups: list[tuple[Connection, BaseProcess]] = []
    started = time.perf_counter()
    for group in range(figures.processes):
        count = len(range(group, clients, figures.processes))
        ours, theirs = spawn.Pipe()
        process = spawn.Process(target=run_group, args=(stack.api_url, count, group, theirs), daemon=True)
        process.start()
        groups.append((ours, process))
    try:
        connected = sum(await _replies(groups, "connected", 180))
        figures.dropped += clients - connected
        # Hold each job at its script node about as long again as connecting took: subscribing is quicker.
        figures.hold_s = max(3.0, 1.5 * (time.perf_counter() - started))
        asked = await stack.llm.requests()
        await stack.llm.hold(figures.hold_s)
        async with api_client(stack.api_url) as api:
            job_ids = [job for job, _ in await asyncio.gather(*(submit(api) for _ in range(jobs)))]
        # The LLM worker runs only a few calls at a time: the jobs end in waves, the last after at most jobs × hold.
        wait_s = jobs * figures.hold_s + 60
        for pipe, _ in groups:
            pipe.send((job_ids, wait_s))
        await _until(lambda: _asked_at_least(stack, asked + jobs), 120)
        await stack.llm.hold(0.0)
        await _replies(groups, "subscribed", 120)
        figures.api_rss_mb = rss_mb(api_pid)
        for reply in await _replies(groups, "done", wait_s + 60):
            arrivals, dropped, late = reply
            figures.dropped += dropped
            figures.late += late
            figures.latencies += [arrived - await finished.wait(job_id, 10) for job_id, arrived in arrivals]
        figures.api_rss_mb = max(figures.api_rss_mb, rss_mb(api_pid))
    finally:
        with contextlib.suppress(OSError, RuntimeError):  # the peer gone: nothing to release
            await stack.llm.hold(0.0)
        for pipe, _ in groups:
            with contextlib.suppress(OSError):
                pipe.send("close")
        for _, child in groups:
            child.join(30)
            if child.is_alive():
                child.kill()
    return figures


async def _asked_at_least(stack: BenchStack, count: int) -> bool:
    return await stack.llm.requests() >= count


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f}s")
        await asyncio.sleep(0.05)
