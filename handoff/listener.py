"""The pub/sub listener: status/progress/data messages of both planes → Redis keys, job_events, jobs.

It also notices a data-plane failure that arrives without a handback (status `failed` plus the
graph in `job:<id>`) and signals the workflow, so a job never waits forever.

The workflow's own status messages are not written again: its step wrote their rows with its snapshot
(activities/bridge.py), so they cost a relay no PostgreSQL round trip.

Messages are written in rounds: `record_held`, a task of its own, writes what is held in one round trip, and what
arrives meanwhile waits for its next round (idle, each message is written at once). Progress is also folded: a data
plane reports it in bursts (nine messages in a few milliseconds for one sadtalker segment), and only the highest
value per job matters to the keys and the coalesced job_events row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core import jobkeys
from core.contracts import Bridge, ContractError
from core.messages import JobEvent, channel_job, parse_event
from core.metrics import PUBSUB_MESSAGES
from core.redis import TRANSIENT
from core.retry import call_with_retry, retrying
from core.schemas import first_error
from core.store import REFUSED, is_job_id
from core.supervise import TaskHealth
from core.temporal import RPC_TIMEOUT
from core.wire import WireLimits
from handoff.event_log import EventLog, Heard
from handoff.relay import SignalNotDelivered
from handoff.streams import dead_letter
from workflows.graph import drop_nulls, failed_nodes, python_part
from workflows.inputs import Handback
from workflows.names import CONTROL_SOURCE, DATAPLANE_FAILED
from workflows.status import JobStatus

log = logging.getLogger(__name__)

STOP_WRITE_SECONDS = 2.0  # how long a stopping relay may spend writing what it holds
ROUND_LIMIT = 1000  # status and data messages written in one round (one transaction)
CLOCK_AHEAD = timedelta(minutes=1)  # how far ahead of ours a publisher's clock may be before its times are not taken
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # a message dated before this is dated when heard
FAILURE_SIGNAL_SECONDS = 900.0  # how long a data-plane failure's signal is retried through a Temporal outage

UNREADABLE_FAILURE = "the data plane reported the job failed; the failed node's own error could not be read"


class EventListener:
    def __init__(
        self, redis: aioredis.Redis, events: EventLog, client: Client, bridge: Bridge, limits: WireLimits = WireLimits()
    ):
        self.redis, self.events, self.client, self.bridge, self.limits = redis, events, client, bridge, limits
        self.progress: dict[str, Heard] = {}  # per job, the highest progress message not yet written
        self.held: list[Heard] = []  # status and data messages not yet written
        self.waiting = asyncio.Event()  # something is held
        self.signalling: set[asyncio.Task] = set()  # data-plane failures being signalled (see _signal_failure)

    async def on_message(self, channel: bytes | str, raw: bytes | str) -> None:
        """One message as read (bytes): recorded, or set aside as a dead letter when it breaks the contract."""
        try:
            _, job_id = channel_job(self.bridge, channel)  # cheap: a flood about no job costs no parsing
            if not is_job_id(job_id):
                raise ContractError(f"{job_id!r} is not a job id (unknown job)")
            event = parse_event(self.bridge, channel, raw, self.limits.max_bytes)
        except ContractError as exc:
            PUBSUB_MESSAGES.labels(kind="invalid").inc()
            source = self.bridge.pubsub_source
            letter = {"channel": channel, "data": raw}
            dead = self.bridge.dead_letter(source)
            await dead_letter(self.redis, source, dead, letter, str(exc), self.limits.dead_letters)
            return
        PUBSUB_MESSAGES.labels(kind=event.kind).inc()
        heard_at = datetime.now(UTC)
        if event.created is None or not EARLIEST <= event.created <= heard_at + CLOCK_AHEAD:
            # Its row's time: when it was heard, not when its round is written; nor a time to come, which would keep
            # the row past retention (that reads this time) and put progress in an interval not yet begun; nor one
            # before any job (year 1, say), which PostgreSQL may not even take.
            event = dataclasses.replace(event, created=heard_at)
        if event.progress is not None:
            self._hold_progress(channel, raw, event)
            return
        if event.recorded_by_workflow:
            return  # its row went in with the workflow's snapshot (activities/bridge.py): one write saved per message
        if event.status == JobStatus.FAILED and event.source != CONTROL_SOURCE:
            await self._record_dataplane_failure(Heard(channel, raw, event))
            return
        self.held.append(Heard(channel, raw, event))
        self.waiting.set()

    async def _record_dataplane_failure(self, heard: Heard) -> None:
        """Written at once, alone, since only the relay that recorded the message first signals the workflow: several
        relays hear every message. A job without a row yet (its first push and row are written at once), or a
        message PostgreSQL refuses, lets every relay signal: the workflow takes the first, drops the rest."""
        job_id = heard.event.job_id
        try:
            recorded = await self.events.record(*heard)
        except REFUSED as exc:  # a row PostgreSQL cannot take must not cost the job its signal
            log.error("PostgreSQL refused the data-plane failure of job %s (%s); signalled all the same", job_id, exc)
            recorded = None
        if recorded is not False:
            task = asyncio.create_task(self._signal_failure(job_id))
            self.signalling.add(task)
            task.add_done_callback(self.signalling.discard)

    async def _signal_failure(self, job_id: str) -> None:
        """In a task of its own, not in the pub/sub loop. The handback is made once, from the graph as the failure
        left it: a try made later, on a graph read again, could carry a newer run's segment tag and fail that
        segment. Only the signal is retried, through a Temporal outage, for up to FAILURE_SIGNAL_SECONDS; the
        segment's own timeout ends the job's wait after that."""
        try:
            async with asyncio.timeout(FAILURE_SIGNAL_SECONDS):
                handback = await call_with_retry(
                    f"reading the graph of job {job_id}", TRANSIENT, lambda: self._failure_handback(job_id)
                )
                if handback is not None:
                    await call_with_retry(
                        f"signalling job {job_id} that its data plane failed",
                        (SignalNotDelivered,),
                        lambda: self._signal_failed(job_id, handback),
                    )
        except Exception:
            log.exception("job %s: its data-plane failure went unsignalled; the segment's timeout ends it", job_id)

    async def aclose(self) -> None:
        """Stop signalling: a relay that stops leaves what it did not deliver to the segments' timeouts."""
        for task in self.signalling:
            task.cancel()
        await asyncio.gather(*self.signalling, return_exceptions=True)

    def _hold_progress(self, channel: bytes | str, raw: bytes | str, event: JobEvent, again: bool = False) -> None:
        assert event.progress is not None
        held = self.progress.get(event.job_id)
        if held is not None:
            if not again:
                PUBSUB_MESSAGES.labels(kind="progress_folded").inc()
            if held.event.progress is not None and held.event.progress >= event.progress:
                return
        self.progress[event.job_id] = Heard(channel, raw, event)
        self.waiting.set()

    async def record_held(self, health: TaskHealth | None = None) -> None:
        """Write what is held, round after round, until cancelled (a supervised task). While Redis is down, what is
        held waits (progress folded with what arrives meanwhile) and the round is retried with the usual backoff.
        Stopped, it writes what it still holds first."""
        on_retry = health.failing if health else None
        try:
            while True:
                if health:
                    health.serving()
                await self.waiting.wait()
                async for attempt in retrying("writing reported events", TRANSIENT, on_retry=on_retry):
                    with attempt:
                        await self.write_held()
        finally:
            await self._write_held_at_stop()

    async def _write_held_at_stop(self) -> None:
        """Last rounds, bounded: the messages held were heard by this relay alone, maybe, and pub/sub keeps none."""
        try:
            async with asyncio.timeout(STOP_WRITE_SECONDS):
                while self.held or self.progress:
                    await self.write_held()
        except Exception as exc:  # Redis or PostgreSQL gone too: nothing more a stopping relay can do
            unwritten = len(self.held) + len(self.progress)
            log.warning("stopping with %d messages heard but not recorded: %r", unwritten, exc)

    async def write_held(self) -> None:
        """One round: the held messages (up to ROUND_LIMIT status and data messages; more wait for the next round)
        go to job_events; then reported progress rises in the keys, clamped to what the job's open work can reach (a
        status message never sets job:<id>:status: only the workflow's snapshots do). PostgreSQL first, so Redis
        being down delays no row. A round that fails or is stopped part way is held again, whole: writing a row
        again changes nothing, each being keyed by its fingerprint."""
        self.waiting.clear()
        progress, self.progress = self.progress, {}
        held, self.held = self.held[:ROUND_LIMIT], self.held[ROUND_LIMIT:]
        if self.held:
            self.waiting.set()
        try:
            await self.events.record_many([*held, *progress.values()])
            if progress:
                pipe = self.redis.pipeline(transaction=False)
                for heard in progress.values():
                    assert heard.event.progress is not None
                    jobkeys.report_progress(pipe, self.bridge, heard.event.job_id, heard.event.progress)
                await pipe.execute()
        except BaseException:
            self.held[:0] = held
            self.waiting.set()
            for heard in progress.values():
                self._hold_progress(*heard, again=True)
            raise

    async def _failure_handback(self, job_id: str) -> Handback | None:
        """The existing worker reports a failed node by status + job:<id> graph, without a handback: the handback
        that graph makes, or None when nothing in it is usable (the segment's timeout still ends the wait)."""
        raw = await self.redis.hget(self.bridge.job_key(job_id), "graph")
        try:
            graph = drop_nulls(json.loads(raw)) if raw else None
        except json.JSONDecodeError:
            graph = None
        if not isinstance(graph, dict) or first_error(graph, "graph.schema.json"):
            return None
        if any(node["plane"] == "python" for node in failed_nodes(graph)):
            return Handback(python_part(graph))
        # The node's own error was overwritten (a node-plane branch wrote job:<id> meanwhile): the failure still ends
        # the segment now, with what we know, instead of waiting for its timeout.
        metadata = {"handoff": (graph.get("metadata") or {}).get("handoff")}
        return Handback({"metadata": metadata, "nodes": []}, reason=UNREADABLE_FAILURE)

    async def _signal_failed(self, job_id: str, handback: Handback) -> None:
        try:
            await self.client.get_workflow_handle(job_id).signal(DATAPLANE_FAILED, handback, rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                log.info("job %s not waiting for a data-plane failure (%s)", job_id, exc.message)
                return
            raise SignalNotDelivered(f"{exc.status.name if exc.status else 'error'}: {exc.message}") from exc
