"""A consumer-group reader for one Redis stream: blocking reads, dead letters, reclaiming, reconnecting.

The relay (process:control) and the reference data-plane worker (process:data) both run on it. Entries are
read as bytes and checked here (size, UTF-8, delivery count) before a handler sees them as text; whatever
breaks the contract, here or in the handler (ContractError), is copied to the dead-letter stream and acked.
One entry never stops the others: each is handled in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.contracts import ContractError
from core.metrics import DEAD_LETTERS
from core.redis import TRANSIENT, Entry, blocking_read_ms, bytes_twin, raise_if_cancelled
from core.retry import call_with_retry, retrying
from core.supervise import TaskHealth
from core.wire import WireLimits, dead_letter_fields, decode_fields

log = logging.getLogger(__name__)

EntryHandler = Callable[[str, dict[str, str]], Awaitable[None]]
DEAD_SUFFIX = ":dead"  # for streams of our own; the bridge's streams name theirs in config/redis.bridge.json


class GroupVanished(Exception):
    """The consumer group was deleted under us (FLUSHALL, a restored snapshot); it is created again."""


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create the group (and stream) if missing; from id 0 so entries written before we started are read."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def dead_letter(
    redis: aioredis.Redis,
    source: str,
    dead_stream: str,
    fields: Mapping[Any, Any],
    error: str,
    max_entries: int = WireLimits.dead_letters,
) -> None:
    """Copy an invalid entry (or message) aside with the reason, so nothing is silently lost.

    The copy is always readable text: bytes that are not UTF-8 are kept base64-encoded (see core/wire.py).
    The stream keeps about the newest `max_entries` (the relays' cleanup trims it exactly, and by age).
    """
    log.warning("dead letter from %s: %s", source, error)
    DEAD_LETTERS.labels(source=source).inc()
    entry: Entry = {}
    for name, value in {**dead_letter_fields(fields), "error": error[:2000], "stream": source}.items():
        entry[name] = value
    await redis.xadd(dead_stream, entry, maxlen=max_entries, approximate=True)


class StreamConsumer:
    """Reads `stream` as `consumer` in `group`; each entry goes to `handle`, which acks it when done.

    At most `concurrency` entries are in hand at once, and a read asks for no more than the free
    slots, so idle peers in the group get the rest. With `claim_idle_ms`, entries another consumer
    left pending that long are taken over (None: never, for work that may legitimately run long);
    an entry taken over more than `limits.max_deliveries` times is dead-lettered (to `dead_stream`) instead.
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
        limits: WireLimits = WireLimits(),
        dead_stream: str | None = None,
    ):
        self.redis, self.stream, self.group, self.consumer = redis, stream, group, consumer
        self.handle, self.limits = handle, limits
        self.dead_stream = dead_stream or f"{stream}{DEAD_SUFFIX}"
        self.block_ms, self.batch, self.claim_idle_ms = block_ms, batch, claim_idle_ms
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task] = set()
        self.in_hand: set[bytes] = set()

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    @property
    def free_slots(self) -> int:
        """How many more entries this consumer can take on now."""
        return max(0, self.concurrency - len(self.tasks))

    async def serve_claimed(self, entry_ids: list[str]) -> None:
        """Serve entries claimed for this consumer outside its own reads (a dead peer's, taken over by
        handoff/takeover.py): one already in hand is skipped, one deleted since is acked."""
        reader = bytes_twin(self.redis)
        try:
            ids = [raw for raw in (entry_id.encode("ascii") for entry_id in entry_ids) if raw not in self.in_hand]
            pipe = reader.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(self.stream, entry_id, entry_id)
            found = await pipe.execute()
            deliveries = await self._delivery_counts(reader, ids)
        finally:
            await reader.aclose()
        for entry_id, rows in zip(ids, found, strict=True):
            if rows:
                await self._dispatch(entry_id, rows[0][1], deliveries.get(entry_id, 1))
            else:
                await self.ack(entry_id.decode("ascii"))

    async def set_aside(self, entry_id: str, fields: Mapping[Any, Any], reason: str) -> None:
        """Dead-letter the entry with `reason`, then ack it; both retried until Redis takes them."""
        await call_with_retry(
            f"dead-lettering {self.stream} {entry_id}",
            TRANSIENT,
            lambda: dead_letter(self.redis, self.stream, self.dead_stream, fields, reason, self.limits.dead_letters),
        )
        await call_with_retry(f"acking {self.stream} {entry_id}", TRANSIENT, lambda: self.ack(entry_id))

    async def run(self, health: TaskHealth | None = None) -> None:
        """Consume until cancelled; entries in hand are then cancelled too and stay pending (unacked).

        A lost connection is retried here, so entries in hand keep going; `health` hears of both."""
        reader = bytes_twin(self.redis)  # replies stay bytes: decoding is ours, per entry
        try:
            async for attempt in retrying(
                f"reading {self.stream}", (*TRANSIENT, GroupVanished), on_retry=health.failing if health else None
            ):
                with attempt:
                    await ensure_group(reader, self.stream, self.group)
                    await self._reclaim(reader)
                    if health:
                        health.serving()
                    await self._read_forever(reader)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await reader.aclose()

    async def _read_forever(self, reader: aioredis.Redis) -> None:
        loop = asyncio.get_running_loop()
        # Entries in hand are touched, and others' idle ones taken over, twice per claim_idle_ms.
        upkeep_every = (self.claim_idle_ms or 0) / 2000
        next_upkeep = loop.time() + upkeep_every
        while True:
            async with self.slots:  # wait for one free slot, and ask for no more entries than are free
                free = max(1, self.concurrency - len(self.tasks))
                try:
                    reply: Any = await reader.xreadgroup(  # a list of (stream, entries) with RESP2
                        self.group,
                        self.consumer,
                        {self.stream: ">"},
                        count=min(self.batch, free),
                        block=blocking_read_ms(reader, self.block_ms),
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        raise GroupVanished(str(exc)) from None
                    raise
            raise_if_cancelled()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await self._dispatch(entry_id, fields, deliveries=1)
            if self.claim_idle_ms and loop.time() >= next_upkeep:
                await self._keep_in_hand(reader)
                await self._reclaim(reader)
                next_upkeep = loop.time() + upkeep_every

    async def _keep_in_hand(self, reader: aioredis.Redis) -> None:
        """Reset the idle time of entries still being handled (a signal retried through an outage, say).

        XCLAIM with JUSTID leaves the delivery count alone, so they are neither taken over by a peer
        nor counted as failed deliveries."""
        if self.in_hand:
            await reader.xclaim(self.stream, self.group, self.consumer, 0, list(self.in_hand), justid=True)

    async def _reclaim(self, reader: aioredis.Redis) -> None:
        """Take over entries a consumer (a dead relay, or this one before a crash) left pending too long."""
        if not self.claim_idle_ms:
            return
        start: Any = "0-0"
        while True:
            start, entries, *_ = await reader.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start, count=self.batch
            )
            claimed = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
            deliveries = await self._delivery_counts(reader, [entry_id for entry_id, _ in claimed])
            for entry_id, fields in claimed:
                if entry_id not in self.in_hand:
                    await self._dispatch(entry_id, fields, deliveries.get(entry_id, 1))
            if start in ("0-0", b"0-0"):
                return

    async def _delivery_counts(self, reader: aioredis.Redis, entry_ids: list[bytes]) -> dict[bytes, int]:
        pipe = reader.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        counts = {}
        for rows in await pipe.execute():
            for row in rows:
                counts[row["message_id"]] = row["times_delivered"]
        return counts

    async def _dispatch(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        await self.slots.acquire()
        self.in_hand.add(entry_id)
        task = asyncio.create_task(self._run_one(entry_id, fields, deliveries))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_one(self, raw_id: bytes, raw: dict[bytes, bytes], deliveries: int) -> None:
        entry_id = raw_id.decode("ascii")  # Redis writes stream ids itself: digits and a dash
        fields: Mapping[Any, Any] = raw
        try:
            try:
                if deliveries > self.limits.max_deliveries:
                    limit = self.limits.max_deliveries
                    raise ContractError(f"delivered {deliveries} times and never handled (the limit is {limit})")
                fields = decode_fields(raw, self.limits.max_bytes)
                await self.handle(entry_id, fields)
            except ContractError as exc:
                await self.set_aside(entry_id, fields, str(exc))
        except Exception:  # a bug, not bad input: the entry stays pending, to be taken over and counted
            log.exception("handling %s %s failed (delivery %d); left pending", self.stream, entry_id, deliveries)
        finally:
            self.in_hand.discard(raw_id)
            self.slots.release()
