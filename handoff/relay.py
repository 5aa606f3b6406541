"""The handback relay: process:control entries become workflow signals, acked only once delivered."""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import Bridge, ContractError
from core.messages import parse_graph_entry
from core.metrics import HANDBACKS, HANDOFF_SECONDS
from core.temporal import RPC_TIMEOUT
from handoff.streams import StreamConsumer, dead_letter
from workflows.inputs import Handback
from workflows.names import HANDBACK

log = logging.getLogger(__name__)


class HandbackRelay:
    def __init__(self, redis: aioredis.Redis, client: Client, bridge: Bridge, consumer: str):
        self.redis, self.client, self.bridge = redis, client, bridge
        self.consumer = StreamConsumer(
            redis,
            bridge.control_stream,
            bridge.control_group,
            consumer,
            self.relay,
            block_ms=bridge.block_ms,
            batch=bridge.batch_size,
            claim_idle_ms=bridge.claim_idle_ms,
        )

    async def run(self) -> None:
        await self.consumer.run()

    async def relay(self, entry_id: str, fields: dict) -> None:
        try:
            job_id, graph = parse_graph_entry(fields)
        except ContractError as exc:
            await self._set_aside(entry_id, fields, str(exc))
            return
        received_ms = int(time.time() * 1000)
        try:
            await self.client.get_workflow_handle(job_id).signal(HANDBACK, Handback(graph), rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise  # Temporal unavailable: leave pending, to be reclaimed and retried
            await self._set_aside(entry_id, fields, f"no running job {job_id}")
            return
        await self.consumer.ack(entry_id)
        HANDBACKS.labels(outcome="signalled").inc()
        if fields.get("created", "").isdigit():
            HANDOFF_SECONDS.observe(max(0.0, received_ms / 1000 - int(fields["created"]) / 1000))

    async def _set_aside(self, entry_id: str, fields: dict, error: str) -> None:
        stream = self.bridge.control_stream
        await dead_letter(self.redis, stream, self.bridge.dead_letter(stream), fields, error)
        await self.consumer.ack(entry_id)
        HANDBACKS.labels(outcome="dead_letter").inc()
