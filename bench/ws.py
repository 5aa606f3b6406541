"""WebSocket fan-out: many clients of /ws subscribed over a few running jobs; from the workflow's `completed` publish
(as our own Redis subscriber sees it) to its arrival at each client, and the API's memory meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from bench.load import Finished, api_client, submit
from bench.stack import BenchStack
from tests.ws_clients import WsClient, ws_client
from workflows.status import JobStatus

CONNECTS_AT_ONCE = 50


@dataclass
class WsFigures:
    clients: int
    jobs: int
    latencies: list[float] = field(default_factory=list)  # seconds, one per client that got `completed`
    dropped: int = 0  # could not connect or subscribe, or never got `completed`
    late: int = 0  # subscribed only after its job had ended (not measured, not dropped)
    api_rss_mb: float = 0.0
    hold_s: float = 0.0


class FanOut:
    def __init__(self, stack: BenchStack, finished: Finished, figures: WsFigures):
        self.stack, self.finished, self.figures = stack, finished, figures
        self.gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.connected: list[WsClient] = []
        self.subscribed = asyncio.Event()
        self.release = asyncio.Event()
        self.waiting = 0

    async def client(self, index: int, jobs: asyncio.Future) -> None:
        """Connect, subscribe to one job (round robin), wait for its `completed`; any failure counts as dropped."""
        counted = False
        try:
            async with contextlib.AsyncExitStack() as exits:
                async with self.gate:
                    client = await exits.enter_async_context(ws_client(self.stack.api_url, open_timeout=30))
                self.connected.append(client)
                job_id = (await jobs)[index % self.figures.jobs]
                state = await client.subscribe(job_id, timeout=30)
                counted = self._one_subscribed()
                if state["status"] == JobStatus.COMPLETED:
                    self.figures.late += 1
                else:
                    await client.updates_until(job_id, JobStatus.COMPLETED, timeout=self.figures.hold_s + 60)
                    self.figures.latencies.append(client.received[-1][0] - await self.finished.wait(job_id, 10))
                await self.release.wait()  # stay connected until every client is done
        except Exception:  # whatever went wrong with this one client, it was dropped
            self.figures.dropped += 1
            if not counted:
                self._one_subscribed()

    def _one_subscribed(self) -> bool:
        self.waiting -= 1
        if self.waiting == 0:
            self.subscribed.set()
        return True


async def measure_ws(stack: BenchStack, finished: Finished, clients: int = 1000, jobs: int = 10) -> WsFigures:
    figures = WsFigures(clients, jobs)
    fan = FanOut(stack, finished, figures)
    fan.waiting = clients
    job_ids: asyncio.Future = asyncio.get_running_loop().create_future()
    started = time.perf_counter()
    followers = [asyncio.create_task(fan.client(i, job_ids)) for i in range(clients)]
    await _until(lambda: len(fan.connected) + figures.dropped >= clients, 120)
    # Hold each job at its script node long enough for every client to subscribe (about as long as connecting).
    figures.hold_s = max(3.0, 1.5 * (time.perf_counter() - started))
    asked = len(stack.llm.requests)
    stack.llm.delay = figures.hold_s
    async with api_client(stack.api_url) as api:
        job_ids.set_result([job for job, _ in await asyncio.gather(*(submit(api) for _ in range(jobs)))])
    await _until(lambda: len(stack.llm.requests) >= asked + jobs, 30)
    stack.llm.delay = 0.0
    await asyncio.wait_for(fan.subscribed.wait(), 120)
    figures.api_rss_mb = stack.rss_mb("api")
    await asyncio.gather(*(finished.wait(job, figures.hold_s + 60) for job in job_ids.result()))
    await _until(lambda: len(figures.latencies) + figures.dropped + figures.late >= clients, 60, quiet=True)
    figures.api_rss_mb = max(figures.api_rss_mb, stack.rss_mb("api"))
    fan.release.set()
    await asyncio.gather(*followers)
    return figures


async def _until(condition, timeout: float, quiet: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if quiet:
                return
            raise TimeoutError(f"not reached within {timeout:.0f}s")
        await asyncio.sleep(0.05)
