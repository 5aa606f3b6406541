"""The pub/sub listener: status/progress/data messages of both planes → Redis keys, job_events, jobs.

It also notices a data-plane failure that arrives without a handback (status `failed` plus the
graph in `job:<id>`) and signals the workflow, so a job never waits forever.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.service import RPCError

from core import jobkeys
from core.contracts import Bridge, ContractError, first_error
from core.messages import JobEvent, parse_event
from core.metrics import PUBSUB_MESSAGES
from core.store import Event, Store, is_job_id
from core.temporal import RPC_TIMEOUT
from core.wire import WireLimits
from handoff.streams import dead_letter
from workflows.graph import drop_nulls, failed_nodes
from workflows.inputs import Handback
from workflows.names import DATAPLANE_FAILED
from workflows.status import JobStatus

log = logging.getLogger(__name__)


class EventListener:
    def __init__(
        self, redis: aioredis.Redis, store: Store, client: Client, bridge: Bridge, limits: WireLimits = WireLimits()
    ):
        self.redis, self.store, self.client, self.bridge, self.limits = redis, store, client, bridge, limits

    async def on_message(self, channel: bytes | str, raw: bytes | str) -> None:
        """One message as read (bytes): recorded, or set aside as a dead letter when it breaks the contract."""
        try:
            event = parse_event(self.bridge, channel, raw, self.limits.max_bytes)
            if not is_job_id(event.job_id):
                raise ContractError(f"{event.job_id!r} is not a job id (unknown job)")
        except ContractError as exc:
            PUBSUB_MESSAGES.labels(kind="invalid").inc()
            source = self.bridge.pubsub_source
            await dead_letter(
                self.redis, source, self.bridge.dead_letter(source), {"channel": channel, "data": raw}, str(exc)
            )
            return
        PUBSUB_MESSAGES.labels(kind=event.kind).inc()
        await self._update_keys(event)
        await self.store.apply_event(
            Event(event.job_id, event.fingerprint, event.status, event.progress, event.data, event.created)
        )
        if event.status == JobStatus.FAILED:
            await self._detect_dataplane_failure(event.job_id)

    async def _update_keys(self, event: JobEvent) -> None:
        # A status message never sets job:<id>:status: only the workflow decides a job's fate (its snapshots
        # write the key). Reported progress rises, clamped to what the job's open work can reach.
        if event.progress is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        jobkeys.report_progress(pipe, self.bridge, event.job_id, event.progress)
        await pipe.execute()

    async def _detect_dataplane_failure(self, job_id: str) -> None:
        """The existing worker reports a failed node by status + job:<id> graph, without a handback."""
        raw = await self.redis.hget(self.bridge.job_key(job_id), "graph")
        try:
            graph = drop_nulls(json.loads(raw)) if raw else None
        except json.JSONDecodeError:
            graph = None
        if not isinstance(graph, dict) or first_error(graph, "graph.schema.json"):
            return  # nothing usable: the segment timeout still ends the wait
        if not any(node["plane"] == "python" for node in failed_nodes(graph)):
            return
        try:
            await self.client.get_workflow_handle(job_id).signal(
                DATAPLANE_FAILED, Handback(graph), rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as exc:
            log.info("job %s not waiting for a data-plane failure (%s)", job_id, exc.message)
