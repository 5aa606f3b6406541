"""The reference data-plane worker: a Redis Streams peer speaking exactly the existing Python GPU worker's protocol.

It reads graphs from `process:data` (group `workers`), runs every ready python-plane node, and hands the
whole graph back on `process:control`; with a Simulator it serves the generation services with fake outputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from core import jobkeys
from core.contracts import Bridge, contracts
from core.messages import parse_graph_entry
from core.redis import TRANSIENT, raise_if_cancelled, redis_client
from core.retry import call_with_retry
from core.settings import Settings
from core.supervise import Supervisor, TaskHealth
from core.timestamps import now_ms
from core.wire import WireLimits
from handoff.reporting import JobProgress, publish_event
from handoff.streams import StreamConsumer
from handoff.takeover import Liveness
from workflows.graph import (
    OPTIONAL_NODE_FIELDS,
    merged_input,
    ready_nodes,
)
from workflows.status import FINISHED_JOB, JobStatus, NodeStatus

if TYPE_CHECKING:
    from handoff.simulator import Simulator

log = logging.getLogger(__name__)


# KEYS: control stream, data stream; ARGV: max length, group, the data entry's id, then the handback's fields.
_HAND_BACK = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'jobId', ARGV[4], 'created', ARGV[5], 'graph', ARGV[6])
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return id
"""


class JobFinished(Exception):
    """The job ended (cancelled, failed, timed out) while its segment waited or ran: stop spending on it."""


class NodeFailure(Exception):
    """A node that cannot complete; `code` and the message go into the node's `error`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class NodeCall:
    """What a service handler gets: the job, the whole graph, its node, the merged input, the progress reporter."""

    job_id: str
    graph: dict
    node: dict
    input: dict
    progress: JobProgress


Handler = Callable[[NodeCall], Awaitable[dict]]


def as_worker_serialises(graph: dict) -> dict:
    """The graph as the existing worker re-serialises it: every optional field present, null when absent."""
    return {
        "schema": graph["schema"],
        "workflowId": graph["workflowId"],
        "context": graph.get("context"),
        "metadata": graph.get("metadata"),
        "nodes": [{**dict.fromkeys(OPTIONAL_NODE_FIELDS), **node} for node in graph["nodes"]],
        "edges": [
            {
                "from": edge["from"],
                "to": edge["to"],
                "kind": edge.get("kind") or "normal",
                "metadata": edge.get("metadata"),
            }
            for edge in graph["edges"]
        ],
    }


class DataPlaneWorker:
    """Serves python-plane nodes of graphs pushed on `bridge.data_stream`, as `consumer` in the workers group."""

    def __init__(
        self,
        redis: aioredis.Redis,
        bridge: Bridge,
        manifest: dict,
        simulator: Simulator | None,
        consumer: str,
        handback_failures: bool = False,
        concurrency: int = 8,
        limits: WireLimits = WireLimits(),
    ):
        self.redis, self.bridge, self.manifest, self.consumer = redis, bridge, manifest, consumer
        self.handback_failures = handback_failures
        self.concurrency = concurrency
        # Nodes may run for hours, so entries are never reclaimed by idle time alone.
        self.stream = StreamConsumer(
            redis,
            bridge.data_stream,
            bridge.workers_group,
            consumer,
            self.serve_entry,
            block_ms=bridge.block_ms,
            batch=bridge.batch_size,
            claim_idle_ms=None,
            concurrency=concurrency,
            limits=limits,
            dead_stream=bridge.dead_letter(bridge.data_stream),
        )
        self.liveness = Liveness(redis, bridge, consumer, self.stream)
        self.handlers: dict[str, Handler] = {"info.get_capabilities": self.worker_capabilities}
        if simulator:
            self.handlers.update(simulator.handlers())

    async def worker_capabilities(self, call: NodeCall) -> dict:
        return {"workerCaps": json.dumps(self.manifest)}

    async def run(self, health: TaskHealth | None = None) -> None:
        """Serve until cancelled; entries in flight are cancelled too and stay pending (unacked)."""
        log.info(
            "data-plane worker %s serving %s (group %s): %s",
            self.consumer,
            self.bridge.data_stream,
            self.bridge.workers_group,
            ", ".join(sorted(self.handlers)),
        )
        left_over = await self.liveness.start()
        raise_if_cancelled()  # a stop that redis-py swallowed during start-up
        async with asyncio.TaskGroup() as group:
            group.create_task(self.stream.run(health))
            group.create_task(self.liveness.run(left_over))

    async def serve_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        """Run one pushed graph, then hand it back (or record its failure) and ack.

        An invalid entry raises ContractError, and the stream consumer sets it aside (dead letter, ack)."""
        stream = self.bridge.data_stream
        job_id, graph = parse_graph_entry(fields)
        try:
            await self.stop_if_finished(job_id)
            await publish_event(self.redis, self.bridge, "status", job_id, {"status": JobStatus.RUNNING})
            completed = await self.run_graph(job_id, graph)
            await self.stop_if_finished(job_id)
        except JobFinished as finished:
            log.info(
                "job %s is %s: its remaining nodes are skipped, nothing handed back (%s)", job_id, finished, entry_id
            )
        else:
            if completed or self.handback_failures:
                await self._persist(lambda: self.hand_back(job_id, graph, entry_id))
                return
            await self._persist(lambda: self.record_failure(job_id, graph))
        await self._persist(lambda: self.redis.xack(stream, self.bridge.workers_group, entry_id))

    async def run_graph(self, job_id: str, graph: dict) -> bool:
        """Run ready python nodes, each wave concurrently, until none is ready; False once a node fails.

        The caller has just checked that the job goes on; each later wave checks again."""
        progress = JobProgress(self.redis, self.bridge, job_id)
        first_wave = True
        while ready := ready_nodes(graph, "python"):
            if not first_wave:
                await self.stop_if_finished(job_id)
            first_wave = False
            outcomes = await asyncio.gather(*(self.run_node(job_id, graph, node, progress) for node in ready))
            if not all(outcomes):
                return False  # the job has failed: spend no more GPU time on it
        return True

    async def stop_if_finished(self, job_id: str) -> None:
        """Raise JobFinished if job:<id>:status says the job has ended; a Redis error keeps the work going."""
        try:
            status = await self.redis.get(self.bridge.status_key(job_id))
        except TRANSIENT as exc:
            log.warning("could not read the status of job %s (%s); carrying on", job_id, exc)
            return
        finally:
            raise_if_cancelled()
        if status in FINISHED_JOB:
            raise JobFinished(status)

    async def run_node(self, job_id: str, graph: dict, node: dict, progress: JobProgress) -> bool:
        """Run one node by its service, recording output or error on it; True when it completed."""
        node["status"] = NodeStatus.RUNNING
        node["input"] = merged_input(graph, node)
        try:
            handler = self.handlers.get(node["service"])
            if handler is None:
                raise NodeFailure("NO_HANDLER", f"no handler for service {node['service']} on this worker")
            output = await handler(NodeCall(job_id, graph, node, node["input"], progress))
        except NodeFailure as exc:
            log.warning("job %s node %s failed: %s", job_id, node["id"], exc)
            error = {"message": str(exc), "code": exc.code}
        except Exception as exc:
            log.exception("job %s node %s: handler for %s raised", job_id, node["id"], node["service"])
            error = {"message": str(exc) or type(exc).__name__, "code": "HANDLER_ERROR"}
        else:
            node["output"] = output
            node["status"] = NodeStatus.COMPLETED
            data = json.dumps({"nodeId": node["id"], "output": output})
            await publish_event(self.redis, self.bridge, "data", job_id, {"data": data})
            return True
        node["status"] = NodeStatus.FAILED
        node["error"] = error
        return False

    async def hand_back(self, job_id: str, graph: dict, entry_id: str) -> None:
        """The graph onto the control stream, then the segment's entry acked, in one round trip: a script stops at
        a failed XADD, so the entry is never acked without its handback (MULTI/EXEC would ack it regardless)."""
        graph_json = json.dumps(as_worker_serialises(graph))
        keys = (self.bridge.control_stream, self.bridge.data_stream)
        args = (self.bridge.max_length, self.bridge.workers_group, entry_id, job_id, now_ms(), graph_json)
        await self.redis.eval(_HAND_BACK, len(keys), *keys, *args)
        log.info("job %s handed back", job_id)

    async def record_failure(self, job_id: str, graph: dict) -> None:
        """The existing worker's way: graph into job:<id>, status `failed`, and no handback."""
        pipe = self.redis.pipeline(transaction=True)
        jobkeys.set_graph(pipe, self.bridge, job_id, json.dumps(as_worker_serialises(graph)), now_ms())
        await pipe.execute()
        await publish_event(self.redis, self.bridge, "status", job_id, {"status": JobStatus.FAILED})
        log.info("job %s failed; graph recorded in %s", job_id, self.bridge.job_key(job_id))

    async def _persist(self, write: Callable[[], Awaitable[object]]) -> None:
        """Retry a write the protocol depends on (handback, dead letter, ack) until Redis takes it."""
        await call_with_retry("writing to redis", TRANSIENT, write)


async def run_dataplane(
    settings: Settings, simulate: bool, sim_seconds: float, handback_failures: bool = False, consumer: str | None = None
) -> None:
    """`spinbot dataplane`: the reference worker on settings.redis_url until cancelled."""
    from handoff.simulator import (
        Simulator,  # imported here: the simulator builds on this module
    )

    spec = contracts()
    consumer = consumer or f"dataplane-{socket.gethostname()}-{os.getpid()}"
    log.info("REFERENCE data-plane worker %s (not the GPU worker) on %s", consumer, spec.bridge.data_stream)
    if simulate:
        log.warning("SIMULATOR: python-plane outputs are SIMULATED (no real generation), %.1fs per node", sim_seconds)
    else:
        log.info("no simulator: only info.get_capabilities is served; other services fail their node")
    redis = redis_client(settings.redis_url, block_ms=spec.bridge.block_ms)
    worker = DataPlaneWorker(
        redis,
        spec.bridge,
        spec.python_capabilities,
        Simulator(sim_seconds) if simulate else None,
        consumer,
        handback_failures,
        limits=WireLimits.of(settings),
    )
    tasks = Supervisor()
    tasks.start("dataplane-consumer", worker.run)
    try:
        await asyncio.gather(*tasks.tasks)
    finally:
        await tasks.stop()
        await redis.aclose()
