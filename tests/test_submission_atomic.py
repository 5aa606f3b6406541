"""A submission is atomic: a crash or an outage at any point leaves nothing, or a job that runs (issue 9)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.jobs import IDEMPOTENCY_NAMESPACE
from spinbot.ports import free_port
from spinbot.services import popen, start_redis, wait_for_port
from tests.e2e import outcome, wait_for
from tests.stack import api_replica

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "atomic"}}}


def job_id_for(key: str) -> str:
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))


async def workflow_exists(stack, job_id: str) -> bool:
    try:
        await stack.temporal.get_workflow_handle(job_id).describe()
        return True
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise


async def orphans(stack, store, job_ids: list[str]) -> list[str]:
    """Jobs with a row in PostgreSQL but no workflow: the half-made submissions the design must rule out."""
    return [job_id for job_id in job_ids if await store.job(job_id) and not await workflow_exists(stack, job_id)]


async def test_redis_down_during_a_post_leaves_a_job_that_runs(stack, store, llm, tmp_path):
    """The API's own Redis fails mid-submission; the job still runs, and the key finds it afterwards."""
    port = free_port()
    own_redis = start_redis(tmp_path / "redis", port, persist=False)
    settings = stack.settings.model_copy(update={"redis_url": own_redis.url})
    key = f"atomic-{uuid.uuid4()}"
    job_id = job_id_for(key)
    try:
        async with api_replica(settings, stack.temporal) as url, httpx.AsyncClient(base_url=url, timeout=30) as api:
            own_redis.stop()
            first = await api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
            assert first.status_code in (200, 503), first.text
            # The workflow was the commit point: it runs on the healthy workers and records the job itself.
            assert await workflow_exists(stack, job_id)
            assert await outcome(stack, job_id) == ("completed", None)
            assert not await orphans(stack, store, [job_id])
            row = await store.job(job_id)
            assert row is not None and row["status"] == "completed"
    finally:
        own_redis.stop()
    again = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json()["jobId"] == job_id


async def test_a_repeated_key_never_starts_a_second_run(stack, llm):
    key = f"atomic-{uuid.uuid4()}"
    first = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
    job_id = first.json()["jobId"]
    assert await outcome(stack, job_id) == ("completed", None)
    second = await stack.api.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
    assert second.json()["jobId"] == job_id
    description = await stack.temporal.get_workflow_handle(job_id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    runs = [wf async for wf in stack.temporal.list_workflows(f"WorkflowId = '{job_id}'")]
    assert len(runs) == 1


@pytest.mark.timeout(90)
async def test_kill_9_of_the_api_mid_burst_leaves_no_half_made_job(stack, store, llm):
    """A real API process killed while 20 submissions are in flight: every job either runs or never existed."""
    port = free_port()
    env = dict(
        os.environ,
        SPINBOT_TEMPORAL_ADDRESS=stack.settings.temporal_address,
        SPINBOT_REDIS_URL=stack.settings.redis_url,
        SPINBOT_DATABASE_URL=stack.settings.database_url,
        SPINBOT_LLM_ENDPOINT=stack.settings.llm_endpoint,
        SPINBOT_API_PORT=str(port),
        SPINBOT_LOG_FORMAT="json",
    )
    api = popen([sys.executable, "-m", "spinbot", "api"], env=env)
    try:
        await asyncio.to_thread(wait_for_port, port, api, "API", 60)
        keys = [f"burst-{uuid.uuid4()}" for _ in range(20)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def post(key: str) -> int | None:
                try:
                    return (
                        await client.post("/api/jobs", json=SADTALKER, headers={"Idempotency-Key": key})
                    ).status_code
                except httpx.HTTPError:
                    return None  # the server died under this request

            posts = [asyncio.create_task(post(key)) for key in keys]
            await asyncio.wait(posts, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            api.send_signal(signal.SIGKILL)
            codes = await asyncio.gather(*posts)
    finally:
        api.kill()
        api.wait(10)
    job_ids = [job_id_for(key) for key in keys]
    started = [job_id for job_id in job_ids if await workflow_exists(stack, job_id)]
    assert codes.count(200) <= len(started), "every accepted job has a workflow"
    for job_id in started:  # each started job finishes, and its workflow records the row itself
        assert await outcome(stack, job_id) == ("completed", None)
        await wait_for(lambda j=job_id: store.job(j), what=f"row of {job_id}")
    assert await orphans(stack, store, job_ids) == []
