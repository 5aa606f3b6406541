"""The floor Temporal itself sets on this machine: a bare workflow with two no-op activities, back to back.

Compare `make bench` against it in the same session: whatever our jobs take above this figure is ours.
Run: `.venv/bin/python -m bench.temporal_floor`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from spinbot.services import free_port, start_temporal


@activity.defn
async def nothing(value: str) -> str:
    return value


@workflow.defn(sandboxed=False)
class TwoActivities:
    @workflow.run
    async def run(self) -> None:
        for step in ("a", "b"):
            await workflow.execute_activity(
                nothing, step, start_to_close_timeout=timedelta(seconds=10), task_queue="floor-activities"
            )


async def measure(address: str, runs: int, pause: float) -> list[float]:
    client = await Client.connect(address)
    async with (
        Worker(client, task_queue="floor-workflows", workflows=[TwoActivities]),
        Worker(client, task_queue="floor-activities", activities=[nothing]),
    ):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await client.execute_workflow(TwoActivities.run, id=str(uuid.uuid4()), task_queue="floor-workflows")
            times.append(time.perf_counter() - started)
            await asyncio.sleep(pause)
        return times


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="spinbot-floor-") as data_dir:
        server = start_temporal(Path(data_dir), free_port(), None)
        try:
            for pause in (0.0, 0.5):
                times = asyncio.run(measure(server.url, 30, pause))
                print(
                    f"bare 2-activity workflow, {pause:.1f}s between runs: first 5 "
                    f"{[round(t * 1000) for t in times[:5]]} ms,"
                    f" median of the rest {statistics.median(times[5:]) * 1000:.0f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
