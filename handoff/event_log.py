"""The event log: each pub/sub message recorded once in PostgreSQL, none lost while PostgreSQL is down.

A message is written straight away when PostgreSQL answers. When it does not, the message waits in a
Redis stream (the backlog) that every relay drains, as a consumer group, once PostgreSQL is back. Each
row is keyed by a fingerprint of its message, so a message heard by several relays, or written again
after a crash, still lands once.

Progress is coalesced: a job's progress messages within one interval of `progress_seconds` (by the time the
message carries) share one row, keyed by that interval, which keeps the highest progress reported in it. Every
relay picks the same interval for the same message, so coalesced rows land once too; status and data messages
keep a row each.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import redis.asyncio as aioredis

from core.contracts import Bridge, ContractError
from core.event_rows import Event
from core.messages import JobEvent, parse_created, parse_event
from core.metrics import EVENTS_DELAYED
from core.redis import Entry
from core.retry import call_with_retry
from core.store import REFUSED, UNAVAILABLE, Store, is_job_id
from core.supervise import TaskHealth
from handoff.streams import StreamConsumer

log = logging.getLogger(__name__)

BACKLOG_GROUP = "recorders"
DATED_FIELD = "created"  # a backlog entry's date as the relay gave it (ISO 8601); absent from older entries


class Heard(NamedTuple):
    """A pub/sub message as read, with what it says."""

    channel: bytes | str
    raw: bytes | str
    event: JobEvent


def as_row(event: JobEvent, progress_seconds: float = 0.0) -> Event:
    """The job_events row of `event`; a progress message goes to its interval's row when `progress_seconds` > 0."""
    if event.kind != "progress" or progress_seconds <= 0:
        return Event(event.job_id, event.fingerprint, event.status, event.progress, event.data, event.created)
    at = event.created or datetime.now(UTC)
    interval = int(at.timestamp() // progress_seconds)
    fingerprint = f"progress/{progress_seconds:g}s/{interval}"
    return Event(event.job_id, fingerprint, None, event.progress, event.data, event.created, highest_progress=True)


def _dated_as_kept(event: JobEvent, dated: str | None) -> JobEvent:
    """`event` as re-parsed from a backlog entry, with the date the entry was kept with; an entry kept without one
    (by an older relay) keeps the message's own date, as before."""
    if dated is None:
        return event
    try:
        return dataclasses.replace(event, created=parse_created(dated))
    except (ValueError, OverflowError, OSError):
        return event  # only a relay writes this stream, so this is not expected; the message's own date still serves


class EventLog:
    def __init__(
        self, redis: aioredis.Redis, store: Store, bridge: Bridge, consumer: str, progress_seconds: float = 0.0
    ):
        self.redis, self.store, self.bridge = redis, store, bridge
        self.progress_seconds = progress_seconds
        self.backlog = StreamConsumer(
            redis,
            bridge.events_backlog,
            BACKLOG_GROUP,
            consumer,
            self._write_delayed,
            block_ms=bridge.block_ms,
            batch=bridge.batch_size,
            claim_idle_ms=bridge.claim_idle_ms,
            concurrency=4,
        )

    async def record(self, channel: str | bytes, raw: str | bytes, event: JobEvent) -> bool | None:
        """True when this call wrote the event; False when it was already there (or names no job); None when
        that is not known: the job has no row yet, or PostgreSQL is down and the event waits in the backlog."""
        if not is_job_id(event.job_id):
            return False
        try:
            return await self.store.apply_event(as_row(event, self.progress_seconds))
        except UNAVAILABLE as exc:
            await self._keep_in_backlog([Heard(channel, raw, event)], exc)
            return None

    async def record_many(self, heard: Sequence[Heard]) -> None:
        """Record messages in one round trip, as `record` does each; what each did is not
        told. A batch PostgreSQL refuses outright is written again one message at a time, so a row it cannot take
        costs only itself (logged), never the rest of the round."""
        heard = [message for message in heard if is_job_id(message.event.job_id)]
        try:
            await self.store.apply_events([as_row(event, self.progress_seconds) for _, _, event in heard])
        except UNAVAILABLE as exc:
            await self._keep_in_backlog(heard, exc)
        except REFUSED:
            for message in heard:
                try:
                    await self.record(*message)
                except REFUSED as exc:
                    log.error("PostgreSQL refused the event %r of job %s: %s", message.raw, message.event.job_id, exc)

    async def _keep_in_backlog(self, heard: Sequence[Heard], why: BaseException) -> None:
        """Messages PostgreSQL cannot take now, into the backlog that relays drain once it is back (one round trip)."""
        log.warning("PostgreSQL unavailable (%s); %d events kept in the backlog", why, len(heard))
        pipe = self.redis.pipeline(transaction=False)
        for channel, raw, event in heard:
            # The date the relay gave the message (the time it was heard, where the publisher's was missing or to
            # come): parsing `raw` again at the drain would bring back the publisher's date, or the drain's time.
            entry: Entry = {"channel": channel, "raw": raw}
            if event.created is not None:
                entry[DATED_FIELD] = event.created.isoformat()
            pipe.xadd(self.bridge.events_backlog, entry)
        await pipe.execute()
        EVENTS_DELAYED.inc(len(heard))

    async def run(self, health: TaskHealth | None = None) -> None:
        """Drain the backlog (this relay's share of it) until cancelled."""
        await self.backlog.run(health)

    async def _write_delayed(self, entry_id: str, fields: dict) -> None:
        channel, raw = fields.get("channel"), fields.get("raw")
        try:
            event = parse_event(self.bridge, channel, raw) if channel is not None and raw is not None else None
        except ContractError:
            event = None  # it was valid when first read; nothing else could have written this stream
        if event is not None:
            event = _dated_as_kept(event, fields.get(DATED_FIELD))
            row = as_row(event, self.progress_seconds)
            await call_with_retry("writing a delayed event", UNAVAILABLE, lambda: self.store.apply_event(row))
        await self.backlog.ack(entry_id)
        await self.redis.xdel(self.bridge.events_backlog, entry_id)
