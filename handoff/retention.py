"""Retention: the relays delete what the work no longer needs, so Redis and PostgreSQL grow with the work in
flight and a window behind it, never with time.

Every `cleanup_interval_seconds` each relay, as a supervised task:
- trims process:data, process:control and the event backlog to the entries some consumer group has not read or
  not yet acked, plus those younger than `stream_retention_seconds` (one script per stream, atomic against reads);
  a segment's entries go regardless once older than `segment_timeout_seconds` (plus that window): no job waits
  for them any more;
- caps each dead-letter stream at `dead_letter_max_entries` and drops letters older than their retention;
- forgets relays' consumers (process:control, the event backlog) handed nothing for `stream_retention_seconds` and
  holding nothing: every relay process joins under a name of its own, and each restart would leave one more for
  good (a live relay's consumer, so forgotten on a quiet stream, is made again by its next read);
- deletes the job_events rows of jobs finished more than `retention_hours` ago, in batches. (A finished job's
  Redis keys expire by themselves: its last sync gives them a short TTL, see core/jobkeys.py.)
Every step is idempotent, so relays need not agree on who runs it. A round that finds Redis or PostgreSQL away
is reported (the task's health, spinbot_cleanups_total) and the next round tries again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.contracts import Bridge
from core.metrics import CLEANUPS, JOB_EVENTS_DELETED, STREAM_ENTRIES_TRIMMED
from core.redis import TRANSIENT
from core.settings import Settings
from core.store import UNAVAILABLE, Store
from core.stream_lua import STREAM_HELPERS
from core.supervise import TaskHealth
from handoff.event_log import BACKLOG_GROUP
from handoff.streams import DEAD_SUFFIX

log = logging.getLogger(__name__)

OUTAGES: tuple[type[BaseException], ...] = (*TRANSIENT, *UNAVAILABLE)
DELETE_BATCH = 2000  # job_events rows per statement: short transactions, short locks
DELETE_BATCHES_PER_ROUND = 25  # a long backlog (the first round after an upgrade) is worked off over rounds

# KEYS[1]: a stream; ARGV[1]: the window in ms; ARGV[2]: the age in ms past which an entry is trimmed whatever
# the groups say (0: never). Trims, by id (the time Redis added the entry), what is older than the window and what
# every group has both read (up to its last-delivered id) and acked (before its oldest pending entry). Entries past
# that age still pending are acked first (up to 1,000 per group a round): trimming leaves their pending records, which
# would otherwise hold every later round back at them. A stream without groups keeps everything younger than that
# age: nobody has read it yet. Replies {entries trimmed, 1 when the age cut into entries some group had not read or
# not acked, else 0}.
_TRIM_ACKED = (
    STREAM_HELPERS
    + """
local function lower(ams, aseq, bms, bseq)
  if ams < bms or (ams == bms and aseq < bseq) then return ams, aseq end
  return bms, bseq
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = now - tonumber(ARGV[1])
local seq = 0
local given_up = now - tonumber(ARGV[2])
local cut = 0
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then ms = 0 end
for _, raw in ipairs(groups) do
  local g = fields(raw)
  local name = g['name']
  local lms, lseq = parse(g['last-delivered-id'])
  ms, seq = lower(ms, seq, lms, lseq + 1)
  if tonumber(ARGV[2]) > 0 and given_up > 1 then
    local stale = redis.call('XPENDING', KEYS[1], name, '-', string.format('%.0f', given_up - 1), 1000)
    if #stale > 0 then
      local ids = {}
      for i, p in ipairs(stale) do ids[i] = p[1] end
      redis.call('XACK', KEYS[1], name, unpack(ids))
      cut = 1
    end
  end
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    local pms, pseq = parse(pending[2])
    ms, seq = lower(ms, seq, pms, pseq)
  end
end
if tonumber(ARGV[2]) > 0 and given_up > ms then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 and #groups > 0 and cut == 0 then
    local fms, fseq = parse(first[1][1])
    local lms, lseq = lower(fms, fseq, ms, seq)
    if fms < given_up and lms == ms and lseq == seq then cut = 1 end  -- the groups' floor kept it
  end
  ms, seq = given_up, 0
end
if ms <= 0 then return {0, cut} end
return {redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', ms, seq)), cut}
"""
)

# KEYS[1]: a dead-letter stream; ARGV[1]: the most entries it keeps; ARGV[2]: their longest age in ms.
_TRIM_DEAD = """
local trimmed = redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
if oldest > 0 then
  trimmed = trimmed + redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f', oldest))
end
return trimmed
"""


# A relay's consumer that holds nothing and has been handed nothing for ARGV[2] ms: one gone for good, or (Redis
# before 7.2 refreshes a consumer's idle time only as it hands it entries) a live one on a quiet stream, which its
# next read makes again. Checked and deleted in one script, so no entry handed to it meanwhile is dropped with it.
_FORGET_IDLE = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local forgotten = 0
for _, consumer in ipairs(consumers) do
  local about = {}
  for i = 1, #consumer, 2 do about[consumer[i]] = consumer[i + 1] end
  if about['pending'] == 0 and about['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], about['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
"""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of record is kept (from the settings), and how often that is applied."""

    stream_ms: int = 300_000
    # A segment's entries (its push, its handback) older than the ceiling of a wait for the data plane, plus the
    # window, are no use to anyone: the job stopped waiting for them. Trimmed even when a group holds them (a GPU
    # worker that died holding one is never judged dead, and its entry would otherwise keep every later one).
    segment_ms: int = 2 * 3600 * 1000 + 300_000
    dead_letter_entries: int = 1000
    dead_letter_ms: int = 7 * 24 * 3600 * 1000
    finished_seconds: float = 7 * 24 * 3600
    interval_seconds: float = 30.0

    @classmethod
    def of(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            stream_ms=int(settings.stream_retention_seconds * 1000),
            segment_ms=int((settings.segment_timeout_seconds + settings.stream_retention_seconds) * 1000),
            dead_letter_entries=settings.dead_letter_max_entries,
            dead_letter_ms=int(settings.dead_letter_retention_hours * 3600 * 1000),
            finished_seconds=settings.retention_hours * 3600,
            interval_seconds=settings.cleanup_interval_seconds,
        )


@dataclass
class Swept:
    """What one round removed: entries per stream, and job_events rows."""

    trimmed: dict[str, int] = field(default_factory=dict)
    consumers_forgotten: int = 0
    events_deleted: int = 0


class Retention:
    def __init__(self, redis: aioredis.Redis, store: Store, bridge: Bridge, policy: RetentionPolicy):
        self.redis, self.store, self.bridge, self.policy = redis, store, bridge, policy

    @property
    def work_streams(self) -> dict[str, int]:
        """Streams read by consumer groups, trimmed to what every group is done with after the window; each with
        the age past which its entries go regardless (0: never, for events waiting out a PostgreSQL outage)."""
        segment = self.policy.segment_ms
        return {self.bridge.data_stream: segment, self.bridge.control_stream: segment, self.bridge.events_backlog: 0}

    @property
    def dead_letter_streams(self) -> list[str]:
        return [*self.bridge.dead_letter_streams, f"{self.bridge.events_backlog}{DEAD_SUFFIX}"]

    async def run(self, health: TaskHealth) -> None:
        """A round every interval until cancelled; an outage fails the round, not the task."""
        while True:
            try:
                await self.sweep()
            except OUTAGES as exc:
                CLEANUPS.labels(outcome="failed").inc()
                wait = self.policy.interval_seconds
                log.warning("retention cleanup failed (%s: %s); next round in %gs", type(exc).__name__, exc, wait)
                health.failing(exc)
            else:
                CLEANUPS.labels(outcome="done").inc()
                health.serving()
            await asyncio.sleep(self.policy.interval_seconds)

    async def sweep(self) -> Swept:
        """One round. Redis and PostgreSQL are each tried even when the other is away; the first outage is
        raised once both were tried."""
        swept, outages = Swept(), []
        try:
            swept.trimmed = await self.trim_streams()
            swept.consumers_forgotten = await self.forget_idle_consumers()
        except OUTAGES as exc:
            outages.append(exc)
        try:
            swept.events_deleted = await self.delete_expired_events()
        except OUTAGES as exc:
            outages.append(exc)
        if outages:
            raise outages[0]
        return swept

    async def trim_streams(self) -> dict[str, int]:
        """Every stream's trim in one round trip; returns the entries removed per stream."""
        policy = self.policy
        pipe = self.redis.pipeline(transaction=False)
        for stream, give_up_ms in self.work_streams.items():
            pipe.eval(_TRIM_ACKED, 1, stream, policy.stream_ms, give_up_ms)
        for stream in self.dead_letter_streams:
            pipe.eval(_TRIM_DEAD, 1, stream, policy.dead_letter_entries, policy.dead_letter_ms)
        # One stream's error (a key of another type under its name, say) must not keep the others untrimmed.
        replies = iter(await pipe.execute(raise_on_error=False))
        trimmed = {}
        for stream in self.work_streams:
            if (reply := _trimmed(stream, next(replies))) is None:
                continue
            trimmed[stream], cut = map(int, reply)
            if cut:
                log.warning(
                    "retention: trimmed %s entries older than %gs that a consumer group had not read or acked "
                    "(their jobs had stopped waiting for them; a data-plane worker that died holding one?)",
                    stream,
                    policy.segment_ms / 1000,
                )
        for stream in self.dead_letter_streams:
            if (reply := _trimmed(stream, next(replies))) is not None:
                trimmed[stream] = int(reply)
        for stream, count in trimmed.items():
            if count:
                STREAM_ENTRIES_TRIMMED.labels(stream=stream).inc(count)
        return trimmed

    async def forget_idle_consumers(self) -> int:
        """Relays' consumers gone for good (idle past the window, nothing pending); how many were forgotten."""
        pipe = self.redis.pipeline(transaction=False)
        groups = {self.bridge.control_stream: self.bridge.control_group, self.bridge.events_backlog: BACKLOG_GROUP}
        for stream, group in groups.items():
            pipe.eval(_FORGET_IDLE, 1, stream, group, self.policy.stream_ms)
        return sum(int(count) for count in await pipe.execute())

    async def delete_expired_events(self) -> int:
        """job_events rows of jobs finished longer ago than the retention, in batches; returns how many."""
        deleted = 0
        for _ in range(DELETE_BATCHES_PER_ROUND):
            count = await self.store.delete_expired_events(self.policy.finished_seconds, DELETE_BATCH)
            deleted += count
            JOB_EVENTS_DELETED.inc(count)
            if count < DELETE_BATCH:
                break
        if deleted:
            window = self.policy.finished_seconds
            log.info("retention: deleted %d job_events rows of jobs finished over %gs ago", deleted, window)
        return deleted


def _trimmed(stream: str, reply: Any) -> Any:
    """A trim script's reply, or None (logged) when Redis refused it for this stream."""
    if isinstance(reply, ResponseError):
        log.error("retention: could not trim %s: %s", stream, reply)
        return None
    return reply
