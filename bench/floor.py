"""The floor Temporal sets: a bare workflow shaped like one sadtalker job (the same number of activities, local
activities, signals and timers, counted from a real job's history), many queued at once on the same server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Worker

FLOOR_WORKFLOWS = "bench-floor-workflows"
FLOOR_ACTIVITIES = "bench-floor-activities"
HANDBACK = "floor-handback"
LOCAL_ACTIVITY_MARKER = "core_local_activity"
STEP_TIMEOUT = timedelta(seconds=30)


@dataclass
class Shape:
    """What one workflow run does, as its history records it."""

    activities: int
    local_activities: int
    signals: int
    timers: int
    upserts: int = 0  # search-attribute upserts: counted, not part of the floor
    events: int = 0

    def describe(self) -> str:
        return (
            f"{self.activities} activity, {self.local_activities} local activities, {self.signals} signal,"
            f" {self.timers} timer ({self.upserts} search-attribute upserts, {self.events} events)"
        )


async def shape_of_finished(job: WorkflowHandle) -> Shape:
    """The shape of a job's history once its workflow has ended (`completed` is published by its last step, before
    that step is recorded)."""
    await job.result()
    return shape_of(await job.fetch_history())


def shape_of(history: WorkflowHistory) -> Shape:
    kinds = Counter(event.WhichOneof("attributes") for event in history.events)
    markers = Counter(
        event.marker_recorded_event_attributes.marker_name
        for event in history.events
        if event.HasField("marker_recorded_event_attributes")
    )
    return Shape(
        activities=kinds["activity_task_scheduled_event_attributes"],
        local_activities=markers[LOCAL_ACTIVITY_MARKER],
        signals=kinds["workflow_execution_signaled_event_attributes"],
        timers=kinds["timer_started_event_attributes"],
        upserts=kinds["upsert_workflow_search_attributes_event_attributes"],
        events=len(history.events),
    )


class FloorActivities:
    """No-op work; the local activity that stands for a segment push signals the workflow back, as a relay would."""

    def __init__(self, client: Client):
        self.client = client
        self.signalling: set[asyncio.Task] = set()

    @activity.defn(name="floor.work")
    async def work(self, value: str) -> str:
        return value

    @activity.defn(name="floor.sync")
    async def sync(self, hand_back: bool) -> None:
        if hand_back:
            handle = self.client.get_workflow_handle(activity.info().workflow_id or "")
            task = asyncio.create_task(handle.signal(HANDBACK, "done"))
            self.signalling.add(task)
            task.add_done_callback(self.signalling.discard)


@workflow.defn(name="BenchFloor", sandboxed=False)
class FloorWorkflow:
    """Like a job: an activity with a sync beside it, then per signal a sync that pushes and a wait with a timeout
    (the timer), then the remaining syncs."""

    def __init__(self) -> None:
        self.handed_back = 0

    @workflow.signal(name=HANDBACK)
    def handback(self, _: str) -> None:
        self.handed_back += 1

    @workflow.run
    async def run(self, shape: Shape) -> None:
        syncs = shape.local_activities
        for _ in range(shape.activities):
            work = workflow.start_activity(
                "floor.work", "x", task_queue=FLOOR_ACTIVITIES, start_to_close_timeout=STEP_TIMEOUT
            )
            if syncs:
                syncs -= 1
                await self._sync(False)
            await work
        for n in range(shape.signals):
            syncs -= 1
            await self._sync(True)
            timeout = STEP_TIMEOUT if n < shape.timers else None
            await workflow.wait_condition(partial(self._handed_back, n + 1), timeout=timeout)
        for _ in range(syncs):
            await self._sync(False)

    def _handed_back(self, count: int) -> bool:
        return self.handed_back >= count

    async def _sync(self, hand_back: bool) -> None:
        await workflow.execute_local_activity("floor.sync", hand_back, start_to_close_timeout=STEP_TIMEOUT)


@dataclass
class FloorFigures:
    jobs_per_s: float = 0.0
    paced: list[float] = field(default_factory=list)  # seconds from start to result, one workflow at a time


class Floor:
    """The floor's workers, up for a whole phase, so that its workflows are timed between our jobs: measured
    minutes apart, a drifting machine (this one's CPU per job moved by a third within minutes) blurs the ratio."""

    def __init__(self, client: Client, shape: Shape):
        self.client, self.shape = client, shape

    async def batch(self, count: int) -> float:
        """Seconds from starting `count` workflows at once until the last ended."""
        started = time.perf_counter()
        handles = await asyncio.gather(*(self.start() for _ in range(count)))
        await asyncio.gather(*(handle.result() for handle in handles))
        return time.perf_counter() - started

    async def one(self) -> float:
        """Seconds from start to result of one workflow."""
        started = time.perf_counter()
        await (await self.start()).result()
        return time.perf_counter() - started

    def start(self) -> Awaitable[WorkflowHandle]:
        return self.client.start_workflow(
            FloorWorkflow.run, self.shape, id=f"floor-{uuid.uuid4()}", task_queue=FLOOR_WORKFLOWS
        )


@contextlib.asynccontextmanager
async def floor_workers(address: str, shape: Shape) -> AsyncIterator[Floor]:
    if shape.signals > shape.local_activities:
        raise ValueError(f"the floor hands back from a local activity: {shape.describe()}")
    client = await Client.connect(address)
    floor = FloorActivities(client)
    async with (
        Worker(client, task_queue=FLOOR_WORKFLOWS, workflows=[FloorWorkflow], activities=[floor.sync]),
        Worker(client, task_queue=FLOOR_ACTIVITIES, activities=[floor.work]),
    ):
        yield Floor(client, shape)
