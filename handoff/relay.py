"""The handback relay: process:control entries become workflow signals, acked only once delivered."""

from __future__ import annotations

import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import Bridge, ContractError
from core.logs import log_event
from core.messages import parse_graph_entry
from core.metrics import HANDBACKS, HANDOFF_SECONDS
from core.retry import call_with_retry
from core.supervise import TaskHealth
from core.temporal import RPC_TIMEOUT
from core.wire import WireLimits
from handoff.streams import StreamConsumer
from workflows.graph import python_part
from workflows.inputs import Handback
from workflows.names import HANDBACK

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 1024  # what a signal adds around the graph (payload metadata, the Handback wrapper)
# A handback this small (characters of its graph's JSON, about as many bytes) goes whole: trimming it to what
# changed would cost a Redis round trip and a parse of the job's graph to save a few hundred bytes. A large job's
# (a 500-node graph is ~100 KB) carries only what changed.
TRIM_ABOVE_CHARS = 16 * 1024


class SignalNotDelivered(Exception):
    """Temporal did not take the signal for a reason that passes (unavailable, overloaded, timed out)."""


class HandbackRelay:
    def __init__(
        self, redis: aioredis.Redis, client: Client, bridge: Bridge, consumer: str, limits: WireLimits = WireLimits()
    ):
        self.redis, self.client, self.bridge, self.limits = redis, client, bridge, limits
        self.consumer = StreamConsumer(
            redis,
            bridge.control_stream,
            bridge.control_group,
            consumer,
            self.relay,
            block_ms=bridge.block_ms,
            batch=bridge.batch_size,
            claim_idle_ms=bridge.claim_idle_ms,
            limits=limits,
            dead_stream=bridge.dead_letter(bridge.control_stream),
        )

    async def run(self, health: TaskHealth | None = None) -> None:
        await self.consumer.run(health)

    async def relay(self, entry_id: str, fields: dict[str, str]) -> None:
        """Signal the handback to its job's workflow, then ack; contract errors are set aside by the consumer."""
        try:
            job_id, graph = parse_graph_entry(fields)
            known = await self._known_graph(job_id) if len(fields["graph"]) > TRIM_ABOVE_CHARS else None
            graph = python_part(graph, known)
            self._check_size(graph)
            received_ms = int(time.time() * 1000)
            # Through an outage of Temporal the entry stays in hand (and is kept from peers) until delivered.
            await call_with_retry(
                f"signalling a handback to job {job_id}", (SignalNotDelivered,), lambda: self._signal(job_id, graph)
            )
        except ContractError:
            HANDBACKS.labels(outcome="dead_letter").inc()
            raise
        await self.consumer.ack(entry_id)
        HANDBACKS.labels(outcome="signalled").inc()
        tag = (graph.get("metadata") or {}).get("handoff") or {}
        log_event(log, "segment handed back", job_id=job_id, segment=tag.get("segment"), nodes=len(graph["nodes"]))
        if fields.get("created", "").isdigit():
            HANDOFF_SECONDS.observe(max(0.0, received_ms / 1000 - int(fields["created"]) / 1000))

    async def _known_graph(self, job_id: str) -> dict | None:
        """The job's graph as its workflow last recorded it, so a handback carries only what changed since.

        Signals stay small (a 500-node job's history grows with its work, not with the square of its size);
        without a readable record every python-plane node goes, which is merely bigger.
        """
        try:
            raw = await self.redis.hget(self.bridge.job_key(job_id), "graph")
            known = json.loads(raw) if raw else None
        except (RedisError, ValueError):
            return None
        return known if isinstance(known, dict) and isinstance(known.get("nodes"), list) else None

    def _check_size(self, graph: dict) -> None:
        size = len(json.dumps(graph, separators=(",", ":")).encode())
        if size + ENVELOPE_BYTES > self.limits.signal_bytes:
            raise ContractError(
                f"graph of {size} bytes is over Temporal's payload limit ({self.limits.signal_bytes} bytes)"
            )

    async def _signal(self, job_id: str, graph: dict) -> None:
        try:
            await self.client.get_workflow_handle(job_id).signal(HANDBACK, Handback(graph), rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise ContractError(f"no running job {job_id}") from None
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                raise ContractError(f"Temporal refused the handback of job {job_id}: {exc.message}") from None
            raise SignalNotDelivered(f"{exc.status.name if exc.status else 'error'}: {exc.message}") from exc
