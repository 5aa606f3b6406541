"""Node-plane services registered as activities by capability id, with runtimes from the manifest."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from temporalio import activity

from activities.resources import Resources
from core.contracts import Contracts, service_runtimes
from core.logs import log_event
from core.metrics import NODE_SECONDS
from workflows.inputs import NodeTask

Handler = Callable[[NodeTask, Resources], Coroutine[Any, Any, dict]]
HEARTBEAT_SECONDS = 1.0
log = logging.getLogger(__name__)


def _handler(cap: dict) -> Handler:
    module = importlib.import_module(cap["handler"]["module"])
    return getattr(module, cap["handler"]["method"])


def _as_activity(service: str, handler: Handler, resources: Resources):
    @activity.defn(name=service)
    async def run_service(task: NodeTask) -> dict:
        started = time.perf_counter()
        ids: dict[str, Any] = {"job_id": task.job_id, "node_id": task.node_id, "service": service}
        attempt = activity.info().attempt
        log_event(log, "node started", **ids, attempt=attempt)
        work = asyncio.create_task(handler(task, resources))
        try:
            # Heartbeats carry cancellation to us and let Temporal notice a dead worker long before the timeout.
            while not (await asyncio.wait({work}, timeout=HEARTBEAT_SECONDS))[0]:
                activity.heartbeat()
            output = work.result()
        except Exception as exc:
            seconds = round(time.perf_counter() - started, 3)
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            log_event(log, "node failed", level=logging.WARNING, **ids, attempt=attempt, seconds=seconds, error=reason)
            raise
        else:
            log_event(log, "node completed", **ids, attempt=attempt, seconds=round(time.perf_counter() - started, 3))
            return output
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            NODE_SECONDS.labels(service=service, plane="node").observe(time.perf_counter() - started)

    return run_service


def activities_by_queue(contracts: Contracts, resources: Resources) -> dict[str, list]:
    """Every node-plane service as an activity, grouped by the task queue it is polled on."""
    queues: dict[str, list] = defaultdict(list)
    runtimes = service_runtimes(contracts)
    for cap in contracts.capabilities["capabilities"]:
        queues[runtimes[cap["id"]].task_queue].append(_as_activity(cap["id"], _handler(cap), resources))
    return dict(queues)


def slots_by_queue(contracts: Contracts) -> dict[str, int]:
    """Activity slots a worker opens on each task queue: the `runtime.concurrency` of the services polled there."""
    slots: dict[str, int] = defaultdict(int)
    runtimes = service_runtimes(contracts)
    for cap in contracts.capabilities["capabilities"]:
        slots[runtimes[cap["id"]].task_queue] += int(cap["runtime"]["concurrency"])
    return dict(slots)
