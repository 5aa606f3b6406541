"""A consumer-group reader for one Redis stream: blocking reads, dead letters, reclaiming, reconnecting.

The relay (process:control) and the reference data-plane worker (process:data) both run on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.metrics import DEAD_LETTERS
from core.redis import TRANSIENT, Entry, blocking_read_ms, raise_if_cancelled
from core.retry import retrying

log = logging.getLogger(__name__)

EntryHandler = Callable[[str, dict], Awaitable[None]]
DEAD_LETTER_MAX = 100_000


class GroupVanished(Exception):
    """The consumer group was deleted under us (FLUSHALL, a restored snapshot); it is created again."""


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create the group (and stream) if missing; from id 0 so entries written before we started are read."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def dead_letter(redis: aioredis.Redis, stream: str, dead_stream: str, fields: dict, error: str) -> None:
    """Copy an invalid entry (or message) aside with the reason, so nothing is silently lost."""
    log.warning("dead letter from %s: %s", stream, error)
    DEAD_LETTERS.labels(source=stream).inc()
    entry: Entry = {str(k): str(v)[:1_000_000] for k, v in fields.items()}
    entry.update({"error": error, "stream": stream})
    await redis.xadd(dead_stream, entry, maxlen=DEAD_LETTER_MAX, approximate=True)


class StreamConsumer:
    """Reads `stream` as `consumer` in `group`; each entry goes to `handle`, which acks it when done.

    At most `concurrency` entries are in hand at once, and a read asks for no more than the free
    slots, so idle peers in the group get the rest. With `claim_idle_ms`, entries another consumer
    left pending that long are taken over (None: never, for work that may legitimately run long).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        handle: EntryHandler,
        block_ms: int = 5000,
        batch: int = 64,
        claim_idle_ms: int | None = 30_000,
        concurrency: int = 64,
    ):
        self.redis, self.stream, self.group, self.consumer = redis, stream, group, consumer
        self.handle = handle
        self.block_ms, self.batch, self.claim_idle_ms = block_ms, batch, claim_idle_ms
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task] = set()

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    async def run(self) -> None:
        """Consume until cancelled; entries in hand are then cancelled too and stay pending (unacked)."""
        try:
            async for attempt in retrying(f"reading {self.stream}", (*TRANSIENT, GroupVanished)):
                with attempt:
                    await ensure_group(self.redis, self.stream, self.group)
                    await self._reclaim()
                    await self._read_forever()
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + (self.claim_idle_ms or 0) / 1000
        while True:
            async with self.slots:  # wait for one free slot, and ask for no more entries than are free
                free = max(1, self.concurrency - len(self.tasks))
                try:
                    reply: Any = await self.redis.xreadgroup(  # a list of (stream, entries) with RESP2
                        self.group,
                        self.consumer,
                        {self.stream: ">"},
                        count=min(self.batch, free),
                        block=blocking_read_ms(self.redis, self.block_ms),
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        raise GroupVanished(str(exc)) from None
                    raise
            raise_if_cancelled()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await self._dispatch(entry_id, fields)
            if self.claim_idle_ms and loop.time() >= next_claim:
                await self._reclaim()
                next_claim = loop.time() + self.claim_idle_ms / 1000

    async def _reclaim(self) -> None:
        """Take over entries another consumer (a dead relay or worker) left pending too long."""
        if not self.claim_idle_ms:
            return
        start = "0-0"
        while True:
            start, entries, *_ = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start, count=self.batch
            )
            for entry_id, fields in entries:
                if fields is not None:
                    await self._dispatch(entry_id, fields)
            if start in ("0-0", b"0-0"):
                return

    async def _dispatch(self, entry_id: str, fields: dict) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._run_one(entry_id, fields))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_one(self, entry_id: str, fields: dict) -> None:
        try:
            await self.handle(entry_id, fields)
        except Exception:  # a bug, not bad input: the entry stays pending rather than lost
            log.exception("handling %s %s failed; left pending", self.stream, entry_id)
        finally:
            self.slots.release()
