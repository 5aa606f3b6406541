"""A submission is atomic: a crash or an outage at any point leaves nothing, or a job that runs (issue 9)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from api.jobs import IDEMPOTENCY_NAMESPACE
from handoff.stranded import StrandedJobs
from spinbot.ports import free_port
from spinbot.services import popen, start_redis, wait_for_port
from tests.e2e import BRIDGE, outcome, pushed_segment, submit, wait_for
from tests.holding_proxy import HoldingProxy
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


def api_process(stack, temporal_address: str | None = None) -> tuple[subprocess.Popen, int]:
    """`spinbot api` as a process of its own on the stack's services (or another Temporal address); and its port."""
    port = free_port()
    env = dict(
        os.environ,
        SPINBOT_TEMPORAL_ADDRESS=temporal_address or stack.settings.temporal_address,
        SPINBOT_REDIS_URL=stack.settings.redis_url,
        SPINBOT_DATABASE_URL=stack.settings.database_url,
        SPINBOT_LLM_ENDPOINT=stack.settings.llm_endpoint,
        SPINBOT_API_PORT=str(port),
        SPINBOT_LOG_FORMAT="json",
    )
    return popen([sys.executable, "-m", "spinbot", "api"], env=env), port


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
    api, port = api_process(stack)
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


async def row_says(store, job_id: str, status: str) -> bool:
    return (await store.job(job_id))["status"] == status


async def cancelled_job(stack, store) -> str:
    """A job cancelled while it waited on the data plane, once its row says failed: one a retry may start again."""
    async with stack.no_dataplane():
        job_id = await submit(stack, SADTALKER)
        await pushed_segment(stack.redis, job_id)
        assert (await stack.api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
        with contextlib.suppress(WorkflowFailureError):
            await asyncio.wait_for(stack.temporal.get_workflow_handle(job_id).result(), 10)
    await wait_for(lambda: row_says(store, job_id, "failed"), what="the cancelled job's row to say failed")
    return job_id


CLAIM_WAITING = """
    SELECT count(*) FROM pg_stat_activity
    WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE jobs SET status%'
"""


@pytest.mark.parametrize(
    "then", ["retried again", "put back to failed by a relay", "put back by a relay, PostgreSQL's clock behind"]
)
async def test_a_retry_killed_before_its_run_started_strands_nothing(stack, store, then):
    """A real API process killed (-9) after a retry reset the job and before Temporal got the new run's start
    request. Before, the job said `advertised` for ever with no run, and every later retry was refused (409). With
    PostgreSQL's clock behind Temporal's, the reset was dated before the run closed, and so taken for a reset the
    run had followed: the same for ever, until the claim named the run it replaced."""
    job_id = await cancelled_job(stack, store)
    host, port = stack.settings.temporal_address.rsplit(":", 1)
    async with HoldingProxy(host, int(port)) as temporal, store.pool.acquire() as lock:
        api, api_port = api_process(stack, temporal_address=temporal.address)
        try:
            await asyncio.to_thread(wait_for_port, api_port, api, "API", 60)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
                async with lock.transaction():  # the retry's reset waits on the row, its look-ups done
                    await lock.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", uuid.UUID(job_id))
                    retry = asyncio.create_task(client.post(f"/api/jobs/{job_id}/retry"))
                    await wait_for(lambda: store.pool.fetchval(CLAIM_WAITING), what="the retry's reset to wait")
                    temporal.holding = True  # what the API sends Temporal from now on is never delivered
                await wait_for(lambda: row_says(store, job_id, "advertised"), what="the retry to reset the job")
                await wait_for(lambda: temporal.held_bytes > 0, what="the start request held")
                api.send_signal(signal.SIGKILL)
                with contextlib.suppress(httpx.HTTPError):
                    await retry
        finally:
            api.kill()
            api.wait(10)
    handle = stack.temporal.get_workflow_handle(job_id)
    run = await handle.describe()
    assert run.status == WorkflowExecutionStatus.CANCELED  # no new run was started
    if "clock" in then:  # the reset as a PostgreSQL five seconds behind Temporal dates it
        assert run.close_time is not None
        dated = run.close_time - timedelta(seconds=5)
        await store.pool.execute("UPDATE jobs SET updated = $2 WHERE job_id = $1", uuid.UUID(job_id), dated)
    # Right away it could be a retry still starting (its start call may take a while): another is refused.
    assert (await stack.api.post(f"/api/jobs/{job_id}/retry")).status_code == 409
    await asyncio.sleep(1.0)  # longer than the window below, as SPINBOT_RETRY_SETTLED_SECONDS (60 s) would pass
    if then == "retried again":
        settings = stack.settings.model_copy(update={"retry_settled_seconds": 1.0})
        async with api_replica(settings, stack.temporal) as url, httpx.AsyncClient(base_url=url, timeout=30) as replica:
            reply = await replica.post(f"/api/jobs/{job_id}/retry")
    else:
        search = StrandedJobs(stack.temporal, stack.redis, store, BRIDGE, 1.0, 60, retry_settled_seconds=1.0)
        assert job_id in await search.sweep()
        status = (await stack.api.get(f"/api/status/{job_id}")).json()
        assert (status["status"], status["error"]["message"]) == ("failed", "cancelled")
        assert (await store.job(job_id))["status"] == "failed"
        assert job_id not in await search.sweep()  # once
        # Its status events: the cancel's `failed`, then the relay's, written once.
        assert [e["status"] for e in await store.events(job_id)].count("failed") == 2
        reply = await stack.api.post(f"/api/jobs/{job_id}/retry")
    assert reply.status_code == 200, reply.text
    assert await outcome(stack, job_id) == ("completed", None)
    # The run that went on cleared the claim's name of the run it replaced: a later claim without one (an API from
    # before migration 0005, during an upgrade) is then judged by the clocks, not by a stale name.
    assert await store.pool.fetchval("SELECT retried_run FROM jobs WHERE job_id = $1", uuid.UUID(job_id)) is None


async def test_a_relay_leaves_an_unstarted_retry_alone_while_a_retry_holds_its_row(stack, store):
    """Before, the relay told Redis and clients `failed` first and only then tried the row: against a retry claiming
    the job at that moment, clients were told `failed` while the new run started."""
    job_id = await cancelled_job(stack, store)
    row = await store.job(job_id)
    run_id = (await stack.temporal.get_workflow_handle(job_id).describe()).run_id
    assert await store.claim_retry(job_id, row, 0.0, 60, run_id)  # the retry's reset, whose API then dies
    await stack.redis.set(BRIDGE.status_key(job_id), "advertised")
    await asyncio.sleep(1.0)
    search = StrandedJobs(stack.temporal, stack.redis, store, BRIDGE, 1.0, 60, retry_settled_seconds=1.0)
    async with store.pool.acquire() as retry, retry.transaction():  # another retry is claiming the job
        await retry.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", uuid.UUID(job_id))
        assert job_id not in await search.sweep()
        assert await stack.redis.get(BRIDGE.status_key(job_id)) == "advertised"  # clients were told nothing
    assert job_id in await search.sweep()  # the claim let go without taking it: the next round does
    assert await stack.redis.get(BRIDGE.status_key(job_id)) == "failed"
