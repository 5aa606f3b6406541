"""Liveness of reference data-plane workers, and the takeover of entries a dead one left pending.

Each worker scores itself in `bridge.liveness_key` (a sorted set) with the time its heartbeat runs out,
refreshed every `heartbeat_ms`. Entries held by a consumer whose score has passed are claimed by a live
worker and served again. A consumer that never heartbeats (the existing GPU worker) is never judged dead
this way, and a live worker's entries are never taken, however long its nodes run. The liveness TTL must
outlast any stall of a worker's event loop, or a stalled worker's entries run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.contracts import Bridge
from core.metrics import ENTRIES_TAKEN_OVER
from core.redis import TRANSIENT, raise_if_cancelled
from core.retry import call_with_retry, retrying
from handoff.streams import GroupVanished, StreamConsumer, ensure_group

log = logging.getLogger(__name__)

LEFT_OVER_MAX = 10_000  # entries a restarted worker picks up again under its own name
RETIRE_SECONDS = 2.0  # how long a stopping worker may spend marking itself gone

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Redis's clock, not ours: workers on other machines may disagree about the time.
_HEARTBEAT = _NOW_MS + "return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])"

# On a clean stop: dead as of now, so peers take over what it leaves pending at once.
_RETIRE = _NOW_MS + "return redis.call('ZADD', KEYS[1], now, ARGV[1])"

# Claim (for ARGV[2]) up to ARGV[3] entries held by consumers whose heartbeat has run out; forget consumers
# dead for longer than ARGV[4] ms that hold nothing (by then no read of theirs is still in flight), from the
# liveness set and the group alike. Atomic, so two workers never claim the same entry.
_CLAIM_FROM_DEAD = (
    _NOW_MS
    + """
local holders = {}
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
for _, row in ipairs(summary[4] or {}) do holders[row[1]] = tonumber(row[2]) end
local budget = tonumber(ARGV[3])
local claimed = {}
for name, held in pairs(holders) do
  local score = redis.call('ZSCORE', KEYS[2], name)
  if budget > 0 and name ~= ARGV[2] and score and tonumber(score) <= now then
    local rows = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', budget, name)
    local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
    for _, row in ipairs(rows) do args[#args + 1] = row[1] end
    if #rows > 0 then
      redis.call(unpack(args))  -- counts a delivery: an entry that kills every worker ends as a dead letter
      for _, row in ipairs(rows) do
        claimed[#claimed + 1] = name
        claimed[#claimed + 1] = row[1]
      end
      budget = budget - #rows
    end
    if #rows == held then
      holders[name] = 0
    end
  end
end
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 100)) do
  if name ~= ARGV[2] and (holders[name] or 0) == 0 then
    redis.call('ZREM', KEYS[2], name)
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
  end
end
return claimed
"""
)


class Liveness:
    """Keeps `consumer` alive in the group's liveness set and takes over what dead peers left pending."""

    def __init__(self, redis: aioredis.Redis, bridge: Bridge, consumer: str, stream: StreamConsumer):
        self.redis, self.bridge, self.consumer, self.stream = redis, bridge, consumer, stream

    async def start(self) -> list[str]:
        """Announce this worker; returns the entries this consumer name still holds from an earlier run.

        Called before the stream is read, so none of them is one this run has been handed. Redis being
        away is waited out, as the stream consumer does."""
        return await call_with_retry(f"starting data-plane worker {self.consumer}", TRANSIENT, self._start)

    async def _start(self) -> list[str]:
        await ensure_group(self.redis, self.bridge.data_stream, self.bridge.workers_group)
        await self.beat()
        rows = await self.redis.xpending_range(
            self.bridge.data_stream, self.bridge.workers_group, "-", "+", LEFT_OVER_MAX, self.consumer
        )
        return [str(row["message_id"]) for row in rows]

    async def run(self, left_over: list[str]) -> None:
        """Beat, and take over dead peers' entries, every heartbeat period until cancelled; then retire.

        The two run apart: serving what is taken over may wait for a free slot, a heartbeat never waits."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._every_period("heartbeat", self.beat))
                group.create_task(self._take_over_forever(left_over))
        finally:
            with contextlib.suppress(*TRANSIENT, ResponseError, asyncio.TimeoutError):
                await asyncio.shield(self.retire())

    async def _take_over_forever(self, left_over: list[str]) -> None:
        if left_over:
            log.info(
                "data-plane worker %s serves %d entries it held before it restarted", self.consumer, len(left_over)
            )
            await self.stream.serve_claimed(left_over)
        await self._every_period("takeover", self.take_over)

    async def _every_period(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        async for attempt in retrying(f"data-plane {what} of {self.consumer}", (*TRANSIENT, GroupVanished)):
            with attempt:
                await ensure_group(self.redis, self.bridge.data_stream, self.bridge.workers_group)
                while True:
                    await step()
                    raise_if_cancelled()  # a plain redis-py client, not ours, may have lost a stop request
                    await asyncio.sleep(self.bridge.heartbeat_ms / 1000)

    async def beat(self) -> None:
        await self.redis.eval(_HEARTBEAT, 1, self.bridge.liveness_key, self.consumer, self.bridge.liveness_ttl_ms)

    async def take_over(self) -> int:
        """Claim what dead workers hold, as much as this worker has room for, and serve it."""
        room = self.stream.free_slots
        if room <= 0:
            return 0
        keys = (self.bridge.data_stream, self.bridge.liveness_key)
        try:
            args = (self.bridge.workers_group, self.consumer, room, self.bridge.liveness_ttl_ms)
            reply = await self.redis.eval(_CLAIM_FROM_DEAD, 2, *keys, *args)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise GroupVanished(str(exc)) from None
            raise
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
        for owner in sorted({owner for owner, _ in pairs}):
            ids = [entry_id for name, entry_id in pairs if name == owner]
            log.warning("taking over %d entries from data-plane worker %s (heartbeat gone): %s", len(ids), owner, ids)
        if pairs:
            ENTRIES_TAKEN_OVER.inc(len(pairs))
            await self.stream.serve_claimed([entry_id for _, entry_id in pairs])
        return len(pairs)

    async def retire(self) -> None:
        async with asyncio.timeout(RETIRE_SECONDS):  # a stopping worker does not wait on Redis for long
            await self.redis.eval(_RETIRE, 1, self.bridge.liveness_key, self.consumer)
