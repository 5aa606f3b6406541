"""Activity slots per task queue come from `runtime.concurrency` in the manifest, not a fixed number."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from activities.registry import slots_by_queue
from core.contracts import contracts
from core.settings import Settings
from core.temporal import connect
from spinbot.ports import free_port
from spinbot.services import start_temporal
from spinbot.worker import WorkerRoles, running_workers
from tests.e2e import outcome, submit

pytestmark = pytest.mark.timeout(60)


def _queue_of(service: str) -> str:
    caps = {cap["id"]: cap for cap in contracts().capabilities["capabilities"]}
    return caps[service]["runtime"].get("taskQueue", "spinbot.activities")


def test_slots_are_the_concurrency_of_the_services_on_each_queue():
    caps = contracts().capabilities["capabilities"]
    expected: dict[str, int] = {}
    for cap in caps:
        queue = cap["runtime"].get("taskQueue", "spinbot.activities")
        expected[queue] = expected.get(queue, 0) + cap["runtime"]["concurrency"]
    assert slots_by_queue(contracts()) == expected
    assert slots_by_queue(contracts())[_queue_of("llm.generate_script")] == 4  # config/capabilities.json


async def test_each_activity_worker_opens_the_manifest_slots(tmp_path, redis_url):
    # A Temporal of its own: the SDK allows one worker per task queue and client, and these must steal no tasks.
    temporal = start_temporal(tmp_path / "temporal", free_port(), None)
    try:
        client = await connect(temporal.url)
        roles = WorkerRoles(workflows=False, activities=True)
        async with running_workers(client, Settings(redis_url=redis_url), roles) as workers:
            opened = {w.task_queue: w.config()["max_concurrent_activities"] for w in workers}
    finally:
        temporal.stop()
    assert opened == slots_by_queue(contracts())


async def test_no_more_llm_calls_at_once_than_the_manifest_allows(stack, llm):
    """Six script nodes at once against a slow Ollama: the LLM queue's worker runs 4 (its concurrency) at a time."""
    llm.delay = 1.0
    marker = uuid.uuid4().hex
    request = {"mode": "fixed_graph", "variant": "sadtalker"}
    job_ids = [await submit(stack, {**request, "params": {"script": {"prompt": f"{marker}-{i}"}}}) for i in range(6)]
    results = await asyncio.gather(*(outcome(stack, job_id, timeout=40) for job_id in job_ids))
    assert all(result == ("completed", None) for result in results), results

    spans = [s for s in llm.spans if marker in s["prompt"]]
    assert len(spans) == 6
    most = max(sum(1 for o in spans if o["t0"] <= s["t0"] < o["t1"]) for s in spans)
    assert 2 <= most <= 4, most
