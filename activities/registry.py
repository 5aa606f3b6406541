"""Node-plane services registered as activities by capability id, with runtimes from the manifest."""
from __future__ import annotations

import asyncio
import importlib
import time
from collections import defaultdict
from typing import Awaitable, Callable

from temporalio import activity

from activities.resources import Resources
from spinbot.contracts import Contracts
from spinbot.metrics import NODE_SECONDS
from workflows.inputs import NodeTask, ServiceRuntime
from workflows.names import ACTIVITY_QUEUE

Handler = Callable[[NodeTask, Resources], Awaitable[dict]]
HEARTBEAT_SECONDS = 1.0


def service_runtimes(contracts: Contracts) -> dict[str, ServiceRuntime]:
    """How each node-plane service runs, read from `runtime` in config/capabilities.json."""
    runtimes = {}
    for cap in contracts.capabilities["capabilities"]:
        runtime = cap["runtime"]
        retry = runtime.get("retry", {})
        runtimes[cap["id"]] = ServiceRuntime(
            task_queue=runtime.get("taskQueue", ACTIVITY_QUEUE),
            timeout_seconds=float(runtime["timeoutSeconds"]),
            max_attempts=retry.get("maxAttempts", 3),
            initial_interval_seconds=retry.get("initialIntervalSeconds", 1.0),
            backoff_coefficient=retry.get("backoffCoefficient", 2.0),
        )
    return runtimes


def _handler(cap: dict) -> Handler:
    module = importlib.import_module(cap["handler"]["module"])
    return getattr(module, cap["handler"]["method"])


def _as_activity(service: str, handler: Handler, resources: Resources):
    @activity.defn(name=service)
    async def run_service(task: NodeTask) -> dict:
        started = time.perf_counter()
        work = asyncio.create_task(handler(task, resources))
        try:
            # Heartbeats carry cancellation to us and let Temporal notice a dead worker long before the timeout.
            while not (await asyncio.wait({work}, timeout=HEARTBEAT_SECONDS))[0]:
                activity.heartbeat()
            return work.result()
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
