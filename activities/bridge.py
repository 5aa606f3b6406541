"""The workflow's side effects on each state change: persist, publish, and hand segments to the data plane."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from temporalio import activity

from core import jobkeys
from core.contracts import Bridge
from core.event_rows import Event, announcement
from core.failures import job_error
from core.logs import log_event
from core.metrics import JOB_SECONDS, JOBS_FINISHED
from core.segment_entries import Segment, expire_finished_job, pushed, queue_push, queue_withdraw, withdrawn
from core.store import Store
from core.timestamps import now_ms
from workflows.graph import progress_ceiling
from workflows.inputs import JobSnapshot
from workflows.names import CONTROL_SOURCE, SYNC_JOB
from workflows.status import JobStatus

log = logging.getLogger(__name__)


class BridgeActivities:
    def __init__(self, redis: aioredis.Redis, store: Store, bridge: Bridge, finished_key_seconds: int | None = None):
        self.redis = redis
        self.store = store
        self.bridge = bridge
        self.finished_key_seconds = bridge.ttl if finished_key_seconds is None else finished_key_seconds

    @activity.defn(name=SYNC_JOB)
    async def sync_job(self, snap: JobSnapshot) -> dict | None:
        """One PostgreSQL write and one Redis round trip per state change.

        The step's status and data events are written with its snapshot, so they are in job_events whether or not
        a relay hears them (none subscribed at that moment: a relay restarting, Redis restarting under them all);
        relays leave the workflow's own status messages alone (`control-plane`, with its eventId). Progress is left
        to the relays, which coalesce it. Returns what happened to a pushed or withdrawn segment, so the job's
        history shows it.
        """
        run_id = activity.info().workflow_run_id or ""
        created = str(snap.at_ms) if snap.at_ms else now_ms()
        messages = self._messages(snap, run_id, created)
        events = [event for _, _, event in messages if event is not None]
        created_at, outcome = await asyncio.gather(
            self.store.save_snapshot(snap.job_id, snap.status, snap.progress, snap.graph, events),
            self._redis(snap, run_id, created, [(channel, raw) for channel, raw, _ in messages]),
        )
        if snap.status in jobkeys.TERMINAL:  # Redis holds the only record of the end until PostgreSQL has it
            await expire_finished_job(
                self.redis, self.bridge, snap.job_id, run_id, snap.graph, self.finished_key_seconds
            )
        _log_lifecycle(snap, outcome)
        if snap.announce_status and snap.status in jobkeys.TERMINAL:
            JOBS_FINISHED.labels(status=snap.status).inc()
            JOB_SECONDS.observe(max(0.0, time.time() - created_at.timestamp()))
        return outcome

    def _messages(self, snap: JobSnapshot, run_id: str, created: str) -> list[tuple[str, str, Event | None]]:
        """The step's pub/sub messages (node outputs, progress, status) as (channel, raw, its job_events row; None
        for progress).

        `created` is the workflow's own time of the change: a re-run of this step publishes byte-identical
        messages, which the event log (keyed by a fingerprint of each message) records once. A step re-run in a
        new workflow task (its worker died first) has another time, so each message also carries an eventId that
        names the event itself: a run announces each status, each node's output and each progress once."""
        messages: list[tuple[str, str, Event | None]] = []

        def add(kind: str, what: str, fields: dict) -> None:
            event_id = f"{run_id}/{what}" if run_id else None
            messages.append(announcement(self.bridge, kind, snap.job_id, fields, created, event_id))

        for item in snap.data:
            add("data", f"data/{item.get('nodeId')}", {"data": json.dumps(item)})
        if snap.announce_progress:
            add("progress", f"progress/{snap.progress!r}", {"progress": snap.progress})
        if snap.announce_status:
            status: dict = {"status": snap.status, "source": CONTROL_SOURCE}
            if snap.status == JobStatus.FAILED:
                status["error"] = job_error(snap.graph)  # clients learn why without another look-up
            add("status", f"status/{snap.status}", status)
        return messages

    async def _redis(
        self, snap: JobSnapshot, run_id: str, created: str, messages: list[tuple[str, str]]
    ) -> dict | None:
        bridge, job_id = self.bridge, snap.job_id
        graph_json = json.dumps(snap.graph, separators=(",", ":"))
        pipe = self.redis.pipeline(transaction=False)
        jobkeys.set_graph(pipe, bridge, job_id, graph_json, created)
        jobkeys.set_state(pipe, bridge, job_id, snap.status, snap.progress, progress_ceiling(snap.graph))
        segment, first_script = None, len(pipe)  # the scripts' replies are read back by position
        tag = (snap.graph.get("metadata") or {}).get("handoff") or {}
        if snap.push:
            segment = Segment(job_id, run_id, tag)
            queue_push(pipe, bridge, segment, created, graph_json)
        if snap.withdraw:
            queue_withdraw(pipe, bridge, job_id)
        if snap.status in jobkeys.TERMINAL:
            jobkeys.set_ending(pipe, bridge, job_id, run_id, snap.status, snap.progress, graph_json)
        for channel, raw in messages:
            pipe.publish(channel, raw)
        replies = iter((await pipe.execute())[first_script:])
        outcome: dict = {}
        if segment is not None:
            outcome["push"] = pushed(bridge, segment, next(replies))
        if snap.withdraw:
            outcome["withdraw"] = withdrawn(bridge, job_id, next(replies))
        return outcome or None


def _log_lifecycle(snap: JobSnapshot, outcome: dict | None) -> None:
    """One line per step of a job's life, with its id: status changes, node outputs, segments handed over."""
    if snap.announce_status:
        fields: dict = {"job_id": snap.job_id, "status": snap.status, "progress": round(snap.progress, 4)}
        if snap.status == JobStatus.FAILED:
            fields["error"] = job_error(snap.graph)
        level = logging.WARNING if snap.status == JobStatus.FAILED else logging.INFO
        log_event(log, f"job {snap.status}", level=level, **fields)
    for item in snap.data:
        log_event(log, "node output recorded", job_id=snap.job_id, node_id=item.get("nodeId"))
    if snap.push:
        tag = (snap.graph.get("metadata") or {}).get("handoff") or {}
        log_event(
            log,
            "segment handed to the data plane",
            job_id=snap.job_id,
            segment=tag.get("segment"),
            attempt=tag.get("attempt"),
            outcome=(outcome or {}).get("push"),
        )
