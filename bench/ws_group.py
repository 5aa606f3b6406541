"""A group of WebSocket clients in a process of its own, driven by bench.ws over a pipe: connect, subscribe when told
the job ids, report when each client got its job's `completed`. Each group reads with its own event loop, as clients
on other machines would, so a thousand clients' frames do not queue behind each other in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from multiprocessing.connection import Connection

from tests.ws_clients import WsClient, ws_client
from workflows.status import JobStatus

CONNECTS_AT_ONCE = 25


def run_group(api_url: str, count: int, offset: int, pipe: Connection) -> None:
    asyncio.run(Group(api_url, count, offset, pipe).run())


async def completed_arrival(client: WsClient, timeout: float) -> float:
    """When `completed` arrived; frames are read raw and only that one is parsed."""
    async with asyncio.timeout(timeout):
        while True:
            raw = await client.connection.recv()
            arrived = time.perf_counter()
            if JobStatus.COMPLETED in raw and json.loads(raw).get("status") == JobStatus.COMPLETED:
                return arrived


class Group:
    def __init__(self, api_url: str, count: int, offset: int, pipe: Connection):
        self.api_url, self.count, self.offset, self.pipe = api_url, count, offset, pipe
        self.pending = count  # subscriptions not yet answered
        self.all_subscribed = asyncio.Event()

    async def ask(self):
        return await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)

    async def run(self) -> None:
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        async with contextlib.AsyncExitStack() as exits:

            async def connect() -> WsClient | None:
                try:
                    async with gate:
                        return await exits.enter_async_context(ws_client(self.api_url, open_timeout=30))
                except Exception:  # counted as dropped
                    return None

            clients = await asyncio.gather(*(connect() for _ in range(self.count)))
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

    async def follow(self, client: WsClient | None, job_id: str, wait_s: float) -> tuple[str, float] | str:
        """(job id, arrival of its `completed`), or "late" (subscribed after the end) or "dropped"."""
        state = await self.subscribe(client, job_id)
        if client is None or state is None:
            return "dropped"
        if state["status"] == JobStatus.COMPLETED:
            return "late"
        try:
            return job_id, await completed_arrival(client, wait_s)
        except Exception:  # whatever went wrong with this one client, it was dropped
            return "dropped"

    async def subscribe(self, client: WsClient | None, job_id: str) -> dict | None:
        try:
            return await client.subscribe(job_id, timeout=30) if client else None
        except Exception:
            return None
        finally:
            self.answered()

    def answered(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.all_subscribed.set()
