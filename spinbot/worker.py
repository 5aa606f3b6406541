"""Worker start-up: the workflow worker (with the bridge activities) and node-plane activity workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import httpx
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bridge import BridgeActivities
from activities.registry import activities_by_queue, slots_by_queue
from activities.resources import Resources
from core.contracts import contracts, service_runtimes
from core.redis import redis_client
from core.settings import Settings
from core.store import Store, connect_pool
from workflows.job import JobWorkflow
from workflows.names import WORKFLOW_QUEUE

log = logging.getLogger(__name__)


@dataclass
class WorkerRoles:
    workflows: bool = True
    activities: bool = True
    queues: tuple[str, ...] = ()  # activity task queues to poll; empty means all of them


def workflow_runner(sandboxed: bool) -> WorkflowRunner:
    """The sandbox (SPINBOT_WORKFLOW_SANDBOX) or none: see core/settings.py for why none is the default."""
    if sandboxed:
        # Passing modules through spares a re-import of them per run (~20 ms).
        return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())
    return UnsandboxedWorkflowRunner()


@contextlib.asynccontextmanager
async def running_workers(
    client: Client, settings: Settings, roles: WorkerRoles = WorkerRoles(), stopped: asyncio.Event | None = None
):
    """Start the requested workers on `client`; stop them (and their clients) on exit. `stopped` is set as soon
    as any of them stops by itself (a fatal error), so the process can end and be restarted, not idle healthy."""
    spec = contracts()
    queues = {runtime.task_queue for runtime in service_runtimes(spec).values()}
    if unknown := set(roles.queues) - queues:
        asked, known = ", ".join(sorted(unknown)), ", ".join(sorted(queues))
        raise RuntimeError(f"no node-plane service runs on queue {asked}; the manifest's queues: {known}")
    redis = redis_client(settings.redis_url)
    http = httpx.AsyncClient()
    pool = await connect_pool(settings.database_url) if roles.workflows else None
    workers = []
    if roles.workflows:
        bridge = BridgeActivities(redis, Store(pool), spec.bridge, settings.finished_key_seconds)
        runner = workflow_runner(settings.workflow_sandbox)
        workers.append(
            Worker(
                client,
                task_queue=WORKFLOW_QUEUE,
                workflows=[JobWorkflow],
                activities=[bridge.sync_job],
                workflow_runner=runner,
            )
        )
    if roles.activities:
        resources = Resources(settings, spec, redis, http)
        slots = slots_by_queue(spec)
        for queue, acts in activities_by_queue(spec, resources).items():
            if not roles.queues or queue in roles.queues:
                # Heartbeats go out at least every second, so a cancel reaches the activity within about a second.
                workers.append(
                    Worker(
                        client,
                        task_queue=queue,
                        activities=acts,
                        max_concurrent_activities=slots[queue],
                        max_heartbeat_throttle_interval=timedelta(seconds=1),
                    )
                )
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    if stopped:
        for task in tasks:
            task.add_done_callback(lambda _: stopped.set())
    log.info("workers polling: %s", ", ".join(w.task_queue for w in workers))
    try:
        yield workers
    finally:
        await asyncio.gather(*(worker.shutdown() for worker in workers), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()
        await redis.aclose()
        if pool:
            await pool.close()
