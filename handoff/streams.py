"""A consumer-group reader for one Redis stream: blocking reads, dead letters, reclaiming, reconnecting."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError

from spinbot.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

EntryHandler = Callable[[str, dict], Awaitable[None]]
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
DEAD_LETTER_MAX = 100_000
REDIS_PY_SOCKET_TIMEOUT = 5.0  # what redis-py (8.x) uses when the client is built without one


def raise_if_cancelled() -> None:
    """Re-raise a cancel that redis-py lost: it sends through asyncio.wait_for, which Python 3.11 lets swallow one.

    Every blocking Redis loop calls this after each read, and reads block for a bounded time, so a
    stop request is honoured within one read instead of leaving the task running forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def blocking_read_ms(redis: aioredis.Redis, block_ms: int) -> int:
    """BLOCK for XREADGROUP, kept under the client's socket timeout: a read cut off by that timeout loses
    its reply, and the entries it delivered would stay pending for good."""
    socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout", REDIS_PY_SOCKET_TIMEOUT)
    if not socket_timeout:
        return block_ms
    return max(100, min(block_ms, int(socket_timeout * 1000) - 1000))


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
    entry = {str(k): str(v)[:1_000_000] for k, v in fields.items()}
    entry.update({"error": error, "stream": stream})
    await redis.xadd(dead_stream, entry, maxlen=DEAD_LETTER_MAX, approximate=True)


class StreamConsumer:
    """Reads `stream` as `consumer` in `group`; each entry goes to `handle`, which acks it when done."""

    def __init__(self, redis: aioredis.Redis, stream: str, group: str, consumer: str, handle: EntryHandler,
                 block_ms: int = 5000, batch: int = 64, claim_idle_ms: int = 30_000, concurrency: int = 64):
        self.redis, self.stream, self.group, self.consumer = redis, stream, group, consumer
        self.handle = handle
        self.block_ms, self.batch, self.claim_idle_ms = block_ms, batch, claim_idle_ms
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task] = set()

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                await ensure_group(self.redis, self.stream, self.group)
                delay = 0.1  # reachable again
                await self._reclaim()
                await self._read_forever()
            except TRANSIENT as exc:
                log.warning("redis unavailable for %s (%s); retrying in %.1fs", self.stream, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("group %s on %s vanished; recreating", self.group, self.stream)

    async def _read_forever(self) -> None:
        next_claim = asyncio.get_running_loop().time() + self.claim_idle_ms / 1000
        while True:
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=self.batch,
                                                block=blocking_read_ms(self.redis, self.block_ms))
            raise_if_cancelled()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await self._dispatch(entry_id, fields)
            if asyncio.get_running_loop().time() >= next_claim:
                await self._reclaim()
                next_claim = asyncio.get_running_loop().time() + self.claim_idle_ms / 1000

    async def _reclaim(self) -> None:
        """Take over entries another consumer (a dead relay or worker) left pending too long."""
        start = "0-0"
        while True:
            start, entries, *_ = await self.redis.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, start, count=self.batch)
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
        except Exception:  # the entry stays pending and is reclaimed later
            log.exception("handling %s %s failed; left pending", self.stream, entry_id)
        finally:
            self.slots.release()
