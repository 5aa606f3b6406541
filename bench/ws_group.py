"""A group of WebSocket clients in a process of its own, driven by bench.ws over a pipe: connect, subscribe when told
the job ids, report when each client got its job's `completed`. Each group reads with its own event loop, as clients
on other machines would, so a thousand clients' frames do not queue behind each other in one loop."""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection

from bench.ws_client import BenchClient
from workflows.status import JobStatus

CONNECTS_AT_ONCE = 25


def run_group(api_url: str, count: int, offset: int, pipe: Connection) -> None:
    asyncio.run(Group(api_url, count, offset, pipe).run())


def update_of(job_id: str, status: str | None = None):
    """Matches a pushed update of `job_id` (with `status`, if given)."""
    return lambda m: m.get("type") == "update" and m.get("jobId") == job_id and status in (None, m.get("status"))


class Group:
    def __init__(self, api_url: str, count: int, offset: int, pipe: Connection):
        self.api_url, self.count, self.offset, self.pipe = api_url, count, offset, pipe
        self.pending = count  # subscriptions not yet answered
        self.all_subscribed = asyncio.Event()

    async def ask(self):
        return await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)

    async def run(self) -> None:
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def connect() -> BenchClient | None:
            try:
                async with gate:
                    return await BenchClient.connect(self.api_url, timeout=30)
            except (OSError, TimeoutError):  # counted as dropped
                return None

        clients = await asyncio.gather(*(connect() for _ in range(self.count)))
        try:
            self.pipe.send(("connected", sum(client is not None for client in clients)))
            jobs, wait_s = await self.ask()
            following = asyncio.gather(
                *(self.follow(client, jobs[(self.offset + i) % len(jobs)], wait_s) for i, client in enumerate(clients))
            )
            await self.all_subscribed.wait()
            self.pipe.send(("subscribed", None))
            outcomes = await following
            arrivals = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
            self.pipe.send(("done", (arrivals, outcomes.count("dropped"), outcomes.count("late"))))
            await self.ask()  # stay connected until told to close
        finally:
            for client in clients:
                if client is not None:
                    client.close()

    async def follow(self, client: BenchClient | None, job_id: str, wait_s: float) -> tuple[str, float] | str:
        """(job id, arrival of its `completed`), or "late" (subscribed after the end) or "dropped"."""
        if client is None:
            self.answered()
            return "dropped"
        try:
            # Both expected before subscribing: `completed` may come in the same read as the current state.
            state = client.expect(job_id, update_of(job_id))
            completed = client.expect(JobStatus.COMPLETED, update_of(job_id, JobStatus.COMPLETED))
            client.send({"action": "subscribe", "jobId": job_id})
            try:
                async with asyncio.timeout(30):
                    _, current = await state
            finally:
                self.answered()
            if current["status"] == JobStatus.COMPLETED:
                completed.cancel()
                return "late"
            async with asyncio.timeout(wait_s):
                arrived, _ = await completed
            return job_id, arrived
        except (ConnectionError, TimeoutError):  # whatever went wrong with this one client, it was dropped
            return "dropped"

    def answered(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.all_subscribed.set()
