"""A job whose workflow ends outside the job (an operator terminates it in the Temporal Web UI) is recorded failed,
with the reason, everywhere a client or the retention looks; one whose workflow runs on in a new run is not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey

from core import jobkeys
from core.messages import fingerprint
from core.metrics import role_registry
from core.store import Store, connect_pool
from handoff.dataplane import as_worker_serialises
from handoff.service import run_relay
from handoff.stranded import StrandedJobs, stranded_query
from tests.e2e import BRIDGE, pushed_segment, submit, wait_for
from tests.ws_clients import ws_client
from workflows.names import STATUS_ATTRIBUTE

pytestmark = pytest.mark.timeout(90)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "stranded"}}}
JOB_STATUS = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)


def finished_counted(status: str) -> float:
    """Jobs finished `status` in the relay's metrics, as this process's relays counted them."""
    return role_registry("relay").get_sample_value("spinbot_jobs_finished_total", {"status": status}) or 0.0


def relay_search(stack, store) -> StrandedJobs:
    """The relay's search, as `spinbot relay` runs it (the stack's relay runs one too, on its own interval)."""
    return StrandedJobs(stack.temporal, stack.redis, store, BRIDGE, 1.0, stack.settings.finished_key_seconds)


@contextlib.asynccontextmanager
async def quick_relay(stack):
    """One more relay, as `spinbot relay` runs, whose rounds come every half second instead of every 30. Its settings
    are otherwise the stack's: the stack's own relay may record the job first (a CI run saw it do so)."""
    update = {"cleanup_interval_seconds": 0.5}
    ready = asyncio.Event()
    relay = asyncio.create_task(run_relay(stack.settings.model_copy(update=update), stack.temporal, "quick", ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay


async def test_a_job_terminated_in_temporal_is_recorded_failed_with_the_reason(stack, store):
    """Before, the job showed `running` for ever: in PostgreSQL, in its Redis keys (then PostgreSQL again once they
    expired), to WebSocket clients, and to retention, which never deleted its events."""
    async with stack.no_dataplane(), quick_relay(stack):  # the job waits on the data plane, as behind a stuck GPU
        job_id = await submit(stack, SADTALKER)
        await pushed_segment(stack.redis, job_id)
        async with ws_client(stack.api_url) as ws:
            assert (await ws.subscribe(job_id))["status"] == "running"
            await stack.temporal.get_workflow_handle(job_id).terminate(reason="GPU node drained by ops")

            async def recorded():
                return (await store.job(job_id))["status"] == "failed"

            await wait_for(recorded, timeout=20, what="a relay to record the terminated job failed")
            [*_, update] = await ws.updates_until(job_id, "failed", timeout=10)

    expected = {"nodeId": None, "message": "terminated in Temporal: GPU node drained by ops", "code": "Terminated"}
    assert update["error"] == expected
    status = (await stack.api.get(f"/api/status/{job_id}")).json()
    assert (status["status"], status["error"]) == ("failed", expected)
    graph = (await store.job(job_id))["last_graph"]
    nodes = {node["id"]: node["status"] for node in graph["nodes"]}
    assert nodes == {"script": "completed", "train_voice": "failed", "generate_video": "skipped",
                     "postprocess_video": "skipped"}  # fmt: skip
    assert "failed" in [event["status"] for event in await store.events(job_id)]
    assert await stack.redis.get(BRIDGE.status_key(job_id)) == "failed"
    run_id = (await stack.temporal.get_workflow_handle(job_id).describe()).run_id
    for key in (BRIDGE.status_key(job_id), BRIDGE.pushed_key(job_id, run_id, 1, 1)):  # not the running job's 12 h
        assert 0 < await stack.redis.ttl(key) <= stack.settings.finished_key_seconds < BRIDGE.ttl
    # Its segment, which no worker had read, is taken back, as a cancelled job's is, and the relay counts it.
    assert job_id not in [fields["jobId"] for _, fields in await stack.redis.xrange(BRIDGE.data_stream)]
    assert "spinbot_segments_withdrawn_total" in generate_latest(role_registry("relay")).decode()
    assert job_id not in await relay_search(stack, store).sweep()  # recorded once: later rounds find it finished


async def test_a_job_that_cannot_be_recorded_holds_up_no_other_and_a_nul_in_the_reason_is_dropped(stack, store):
    """One job's error ended the round before the jobs listed after it (visibility lists the newest closed first);
    and PostgreSQL takes no NUL, which an operator's reason may carry."""
    search = relay_search(stack, store)
    async with stack.no_dataplane():
        job_id, broken = await submit(stack, SADTALKER), await submit(stack, SADTALKER)
        for each in (job_id, broken):
            await pushed_segment(stack.redis, each)

            async def saved(each=each):  # the push step writes Redis and PostgreSQL side by side
                return "handoff" in ((await store.job(each))["last_graph"].get("metadata") or {})

            await wait_for(saved, what="the push step's row, which would overwrite the broken one")
        await store.pool.execute(  # a row no close-out can read
            'UPDATE jobs SET last_graph = \'{"nodes": [1], "edges": []}\' WHERE job_id = $1', uuid.UUID(broken)
        )
        try:
            await stack.temporal.get_workflow_handle(job_id).terminate(reason="drained\x00 by ops")
            await stack.temporal.get_workflow_handle(broken).terminate(reason="listed first")

            async def recorded():
                with contextlib.suppress(AttributeError):  # the broken job's, raised once the round is through
                    await search.sweep()
                return (await store.job(job_id))["status"] == "failed"

            await wait_for(recorded, timeout=20, what="the other job recorded failed despite the broken one")
            assert (await store.job(broken))["status"] == "running"  # tried again each round; logged each time
        finally:
            await store.pool.execute("UPDATE jobs SET status = 'failed' WHERE job_id = $1", uuid.UUID(broken))
    error = (await stack.api.get(f"/api/status/{job_id}")).json()["error"]
    assert error["message"] == "terminated in Temporal: drained by ops"


async def test_two_relays_at_once_tell_clients_once(stack, store):
    """Before, two relays whose rounds met on the same terminated job each wrote its keys and each published
    `failed` to its clients (the row took one status event, by its eventId)."""
    async with stack.no_dataplane():
        job_id = await submit(stack, SADTALKER)
        await pushed_segment(stack.redis, job_id)
        handle = stack.temporal.get_workflow_handle(job_id)
        pubsub = stack.redis.pubsub()
        await pubsub.subscribe(BRIDGE.channel("status", job_id))
        try:
            counted = finished_counted("failed")  # before the terminate: the stack's own relay may count it at once
            await handle.terminate(reason="drained")
            run_id = (await handle.describe()).run_id
            relays = [relay_search(stack, store), relay_search(stack, store)]
            outcomes = await asyncio.gather(
                *(relay.close_out(job_id, run_id, WorkflowExecutionStatus.TERMINATED) for relay in relays)
            )
            heard = [await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) for _ in range(5)]
            told = [json.loads(message["data"])["status"] for message in heard if message]
        finally:
            await pubsub.aclose()
    assert outcomes.count(True) <= 1  # none if the stack's own relay got there first
    assert told.count("failed") == 1
    assert finished_counted("failed") - counted == 1  # counted once, by whichever relay recorded it
    assert (await store.job(job_id))["status"] == "failed"
    assert [event["status"] for event in await store.events(job_id)].count("failed") == 1


async def test_a_run_whose_row_was_held_is_looked_at_again_next_round(stack, store, database_url):
    """A round finds the row held (another relay's round, a progress report being written) and leaves the job.
    Before, the next round's search started after this round: a run first listed longer than the visibility lag
    after it closed (a relay's first round, after a restart) was never listed again, and the job showed running."""
    relay_store = await relay_under_test_store(database_url)
    lag = timedelta(seconds=1)
    try:
        async with stack.no_dataplane():
            job_id = await submit(stack, SADTALKER)
            await pushed_segment(stack.redis, job_id)
            # Only the relay under test may write the end: the stack's own relay must not record it meanwhile.
            async with postgresql_refusing_the_end(store, job_id):
                handle = stack.temporal.get_workflow_handle(job_id)
                await handle.terminate(reason="drained")
                run_id = (await handle.describe()).run_id

                async def listed():
                    query = stranded_query(datetime.now(UTC) - timedelta(minutes=5))
                    return [run async for run in stack.temporal.list_workflows(query) if run.run_id == run_id]

                await wait_for(listed, what="the terminated run listed")
                await asyncio.sleep(2 * lag.total_seconds())  # the run closed longer ago than the lag
                search = StrandedJobs(stack.temporal, stack.redis, relay_store, BRIDGE, 1.0, 60, visibility_lag=lag)
                async with store.pool.acquire() as holder, holder.transaction():
                    await holder.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", uuid.UUID(job_id))
                    assert job_id not in await search.sweep()
                assert job_id in await search.sweep()
    finally:
        await relay_store.pool.close()
    assert (await store.job(job_id))["status"] == "failed"


async def test_a_job_whose_workflow_was_reset_runs_on_untouched(stack, store):
    """A reset terminates the run it replaces; the job runs on in the new run and must not be failed."""
    search = relay_search(stack, store)
    async with stack.no_dataplane():
        job_id = await submit(stack, SADTALKER)
        await pushed_segment(stack.redis, job_id)
        handle = stack.temporal.get_workflow_handle(job_id)
        completed = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        [first_task, *_] = [e.event_id async for e in handle.fetch_history_events() if e.event_type == completed]
        old_run = (await handle.describe()).run_id
        await stack.temporal.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=stack.temporal.namespace,
                workflow_execution=WorkflowExecution(workflow_id=job_id, run_id=old_run),
                reason="operator reset",
                workflow_task_finish_event_id=first_task,
                request_id=str(uuid.uuid4()),
            )
        )

        async def old_run_listed():
            query = stranded_query(datetime.now(UTC) - timedelta(minutes=5))
            return [run async for run in stack.temporal.list_workflows(query) if run.run_id == old_run]

        await wait_for(old_run_listed, what="the reset's old run listed as closed while unfinished")
        assert job_id not in await search.sweep()
        assert (await store.job(job_id))["status"] == "running"
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await handle.terminate(reason="test over")


REFUSE_ENDINGS = """
CREATE FUNCTION refuse_ending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') <> 'relay-under-test' THEN
        RAISE EXCEPTION 'PostgreSQL refuses the end of job %', NEW.job_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_ending BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (NEW.job_id = '{job_id}' AND NEW.status IN ('completed', 'failed')) EXECUTE FUNCTION refuse_ending();
"""


@contextlib.asynccontextmanager
async def postgresql_refusing_the_end(store, job_id: str):
    """The job's last step gets its Redis half done but not its PostgreSQL half, as while PostgreSQL is down; only
    the relay under test (by its connection's application_name) may write the job's end."""
    await store.pool.execute(REFUSE_ENDINGS.format(job_id=uuid.UUID(job_id)))
    try:
        yield
    finally:
        await store.pool.execute("DROP TRIGGER refuse_ending ON jobs; DROP FUNCTION refuse_ending()")


async def relay_under_test_store(database_url: str) -> Store:
    joiner = "&" if "?" in database_url else "?"
    return Store(await connect_pool(f"{database_url}{joiner}application_name=relay-under-test", max_size=2))


async def cancel(stack, job_id: str) -> None:
    assert (await stack.api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202


@pytest.mark.parametrize(
    "ending, terminated",
    [("completed", "at once"), ("completed", "once Temporal has the step's JobStatus"), ("cancelled", "at once")],
)
async def test_a_job_whose_last_step_reached_only_redis_is_recorded_as_it_ended(
    stack, store, database_url, ending, terminated
):
    """Before, a job that completed while PostgreSQL was away and was then terminated (its last step would never
    have finished) was recorded `failed`, although every client had been told `completed`; or, once the run's
    JobStatus, upserted with that step, said `completed` (the worker reports a long local activity's commands to
    Temporal every ~8 s), the search skipped it, and its row said `running` for ever."""
    status = "completed" if ending == "completed" else "failed"
    relay_store = await relay_under_test_store(database_url)
    search = relay_search(stack, relay_store)
    listener = stack.redis.pubsub()
    try:
        async with contextlib.AsyncExitStack() as refusing:
            async with stack.no_dataplane():
                job_id = await submit(stack, SADTALKER)
                await pushed_segment(stack.redis, job_id)
                await refusing.enter_async_context(postgresql_refusing_the_end(store, job_id))
                if ending == "cancelled":
                    await cancel(stack, job_id)
            # The job ends (the data plane is back, or it was cancelled); its last step gets no further than Redis.

            async def ended_in_redis():
                return await stack.redis.get(BRIDGE.status_key(job_id)) == status

            await wait_for(ended_in_redis, what="the job's last step to write Redis")
            told = (await stack.api.get(f"/api/status/{job_id}")).json()
            # Until PostgreSQL has the end, Redis is its only record: the keys keep the running job's TTL.
            assert await stack.redis.ttl(BRIDGE.job_key(job_id)) > stack.settings.finished_key_seconds
            assert (await store.job(job_id))["status"] == "running"
            handle = stack.temporal.get_workflow_handle(job_id)
            if terminated != "at once":

                async def upserted():
                    return (await handle.describe()).typed_search_attributes.get(JOB_STATUS) == status

                await wait_for(upserted, timeout=30, what="Temporal to hold the last step's JobStatus")
            await handle.terminate(reason="stuck on PostgreSQL")
            run_id = (await handle.describe()).run_id
            await listener.subscribe(BRIDGE.channel("status", job_id))
            counted = finished_counted(status)

            async def recorded():
                await search.sweep()
                return (await store.job(job_id))["status"] == status

            await wait_for(recorded, timeout=20, what="the relay to record the job's end from Redis")
            heard = [await listener.get_message(ignore_subscribe_messages=True, timeout=0.2) for _ in range(3)]
    finally:
        await listener.aclose()
        await relay_store.pool.close()

    # Clients are told nothing new: what is heard is the step's own message, which the worker repeats until it
    # learns of the terminate; no `failed` from the relay above all.
    own = f"{run_id}/status/{status}"
    assert [json.loads(message["data"])["eventId"] for message in heard if message] in ([], [own], [own, own])
    row = await store.job(job_id)
    if ending == "completed":
        assert (row["progress"], {node["status"] for node in row["last_graph"]["nodes"]}) == (1.0, {"completed"})
    else:
        assert row["last_graph"]["metadata"]["failure"]["message"] == "cancelled"
    # The status row is the one the step would have written (its fingerprint: the step's eventId), once.
    fingerprints = await store.pool.fetch(
        "SELECT fingerprint FROM job_events WHERE job_id = $1 AND status = $2", uuid.UUID(job_id), status
    )
    assert [r["fingerprint"] for r in fingerprints] == [fingerprint(BRIDGE.channel("status", job_id), "", own)]
    assert await stack.redis.get(BRIDGE.status_key(job_id)) == status
    assert 0 < await stack.redis.ttl(BRIDGE.job_key(job_id)) <= stack.settings.finished_key_seconds  # now it may go
    # Once Redis has forgotten the job, the API answers from PostgreSQL what clients were told.
    await stack.redis.delete(*(key(job_id) for key in (BRIDGE.job_key, BRIDGE.status_key, BRIDGE.progress_key)))
    assert (await stack.api.get(f"/api/status/{job_id}")).json() == told
    assert job_id not in await relay_search(stack, store).sweep()
    assert finished_counted(status) - counted == 1  # before, such an end was in no count of finished jobs


@pytest.mark.parametrize("left", ["by an earlier run", "before a data-plane worker wrote the graph again"])
async def test_an_ending_in_redis_that_is_not_this_runs_last_word_is_not_taken(stack, store, left):
    """A reset or a retry whose new run is terminated before its first step finds the ending its earlier run left;
    a data-plane worker that records a node failed rewrites the graph after the step (PROTOCOL: the existing
    worker's way). Either way the job is recorded terminated, with the reason."""
    search = relay_search(stack, store)
    async with stack.no_dataplane():
        job_id = await submit(stack, SADTALKER)
        await pushed_segment(stack.redis, job_id)
        handle = stack.temporal.get_workflow_handle(job_id)
        run_id = (await handle.describe()).run_id
        graph_json = await stack.redis.hget(BRIDGE.job_key(job_id), "graph")
        pipe = stack.redis.pipeline(transaction=False)
        jobkeys.set_ending(pipe, BRIDGE, job_id, "an-earlier-run" if left == "by an earlier run" else run_id,
                           "completed", 1.0, graph_json)  # fmt: skip
        pipe.set(BRIDGE.status_key(job_id), "completed")
        if left != "by an earlier run":  # the existing worker writes field `graph` alone (PROTOCOL §3)
            pipe.hset(BRIDGE.job_key(job_id), "graph", json.dumps(as_worker_serialises(json.loads(graph_json))))
        await pipe.execute()
        await handle.terminate(reason="ended for real")

        async def recorded():
            await search.sweep()
            return (await store.job(job_id))["status"] == "failed"

        await wait_for(recorded, timeout=20, what="the relay to record the job terminated")
    error = (await stack.api.get(f"/api/status/{job_id}")).json()["error"]
    assert error["message"] == "terminated in Temporal: ended for real"
