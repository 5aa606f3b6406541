"""Segment pushes on process:data (issue 9): once per (job, run, segment, attempt), withdrawn on cancel while
unread, and a warning when no live data-plane worker will read them."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import uuid

import pytest
from prometheus_client import REGISTRY
from temporalio.testing import ActivityEnvironment

from activities.bridge import BridgeActivities
from core.contracts import contracts
from handoff.streams import ensure_group
from tests.e2e import BRIDGE, outcome, pushed_segment, submit, wait_for
from tests.test_dataplane import pipeline_graph
from workflows.inputs import JobSnapshot
from workflows.status import JobStatus

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bridge():
    tag = uuid.uuid4().hex
    return dataclasses.replace(contracts().bridge, data_stream=f"t:{tag}:data", control_stream=f"t:{tag}:control")


@pytest.fixture
def activities(redis_client, store, bridge):
    return BridgeActivities(redis_client, store, bridge)


def segment_snapshot(job_id: str, segment: int = 1, attempt: int = 1, **changes) -> JobSnapshot:
    graph = pipeline_graph(job_id, "sadtalker")
    graph["metadata"]["handoff"] = {"segment": segment, "attempt": attempt}
    fields: dict = {"status": JobStatus.RUNNING, "progress": 0.05, "push": True, **changes}
    return JobSnapshot(job_id=job_id, graph=graph, **fields)


async def sync(activities: BridgeActivities, snap: JobSnapshot, run_id: str = "run-1") -> dict | None:
    """The sync step as the workflow's local activity runs it, in run `run_id`."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, is_local=True)
    return await env.run(activities.sync_job, copy.deepcopy(snap))


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_re_run_sync_step_pushes_its_segment_once(activities, redis_client, bridge, job_id):
    snap = segment_snapshot(job_id)
    first = await sync(activities, snap)
    again = await sync(activities, snap)  # the same step re-run (lost completion, worker crash, PG error)
    entries = await redis_client.xrange(bridge.data_stream)
    assert len(entries) == 1, "a re-run of the push step added a second entry"
    assert first and again
    assert first["push"]["entryId"] == again["push"]["entryId"] == entries[0][0]
    assert (first["push"]["repeated"], again["push"]["repeated"]) == (False, True)
    assert json.loads(entries[0][1]["graph"])["metadata"]["handoff"] == {"segment": 1, "attempt": 1}

    await sync(activities, segment_snapshot(job_id, attempt=2))  # a retry attempt of the job
    await sync(activities, snap, run_id="run-2")  # a reset run rebuilding the same tag
    await sync(activities, segment_snapshot(job_id, segment=2))  # the next segment
    assert await redis_client.xlen(bridge.data_stream) == 4
    ttl = await redis_client.ttl(bridge.pushed_key(job_id, "run-1", 1, 1))
    assert 0 < ttl <= bridge.ttl, "the mark expires with the job's keys"


async def test_a_finished_jobs_push_marks_expire_with_its_keys(redis_client, store, bridge, job_id):
    """Each segment's mark kept the running job's TTL (12 h) after the job ended, a key per segment per job."""
    activities = BridgeActivities(redis_client, store, bridge, finished_key_seconds=60)
    for segment in (1, 2):
        await sync(activities, segment_snapshot(job_id, segment=segment))
    marks = [bridge.pushed_key(job_id, "run-1", segment, 1) for segment in (1, 2)]
    assert all(ttl > 60 for ttl in [await redis_client.ttl(mark) for mark in marks])

    await sync(activities, segment_snapshot(job_id, segment=2, push=False, status=JobStatus.COMPLETED))

    assert all(0 < ttl <= 60 for ttl in [await redis_client.ttl(mark) for mark in marks])
    assert 0 < await redis_client.ttl(bridge.last_push_key(job_id)) <= 60


async def test_withdraw_takes_back_an_unread_segment(activities, redis_client, bridge, job_id):
    await ensure_group(redis_client, bridge.data_stream, bridge.workers_group)
    await sync(activities, segment_snapshot(job_id))
    other = str(uuid.uuid4())
    await sync(activities, segment_snapshot(other))  # another job's segment stays
    cancelled = segment_snapshot(job_id, push=False, withdraw=True)
    cancelled.status = JobStatus.FAILED
    result = await sync(activities, cancelled)
    assert result and result["withdraw"]["outcome"] == "withdrawn"
    assert [f["jobId"] for _, f in await redis_client.xrange(bridge.data_stream)] == [other]
    again = await sync(activities, cancelled)  # a re-run of the cancel step
    assert again and again["withdraw"]["outcome"] == "none"
    assert await redis_client.xlen(bridge.data_stream) == 1


async def test_withdraw_leaves_a_segment_a_worker_has_read(activities, redis_client, bridge, job_id):
    await ensure_group(redis_client, bridge.data_stream, bridge.workers_group)
    await sync(activities, segment_snapshot(job_id))
    later = str(uuid.uuid4())
    await sync(activities, segment_snapshot(later))
    read = await redis_client.xreadgroup(bridge.workers_group, "gpu-1", {bridge.data_stream: ">"}, count=1)
    assert read[0][1][0][1]["jobId"] == job_id
    result = await sync(activities, segment_snapshot(job_id, push=False, withdraw=True))
    assert result and result["withdraw"]["outcome"] == "read"
    await redis_client.xack(bridge.data_stream, bridge.workers_group, read[0][1][0][0])  # done and acked: still read
    result = await sync(activities, segment_snapshot(job_id, push=False, withdraw=True))
    assert result and result["withdraw"]["outcome"] == "read"
    assert await redis_client.xlen(bridge.data_stream) == 2
    # The later job's entry was never delivered (it is past the group's last-delivered id): withdrawn.
    result = await sync(activities, segment_snapshot(later, push=False, withdraw=True))
    assert result and result["withdraw"]["outcome"] == "withdrawn"
    assert await redis_client.xlen(bridge.data_stream) == 1


async def test_withdraw_without_any_group_takes_the_entry_back(activities, redis_client, bridge, job_id):
    await sync(activities, segment_snapshot(job_id))
    result = await sync(activities, segment_snapshot(job_id, push=False, withdraw=True))
    assert result and result["withdraw"]["outcome"] == "withdrawn"
    assert await redis_client.xlen(bridge.data_stream) == 0


async def test_a_segment_nobody_reads_is_reported(activities, redis_client, bridge, job_id, caplog):
    metric = "spinbot_segments_without_consumer_total"
    before = counter(metric)
    with caplog.at_level(logging.WARNING, logger="core.segment_entries"):
        result = await sync(activities, segment_snapshot(job_id))
        await sync(activities, segment_snapshot(job_id))  # the same push re-run: reported, not counted again
    assert result and result["push"]["withoutConsumer"] is True and result["push"]["liveConsumers"] == 0
    assert counter(metric) == before + 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(job_id in w and "no live data-plane worker" in w for w in warnings)

    # A reference worker's heartbeat counts until it expires.
    now_ms = int(time.time() * 1000)
    await redis_client.zadd(bridge.liveness_key, {"ref-1": now_ms + 60_000})
    result = await sync(activities, segment_snapshot(job_id, segment=2))
    assert result and result["push"]["liveConsumers"] == 1 and "withoutConsumer" not in result["push"]
    await redis_client.zadd(bridge.liveness_key, {"ref-1": now_ms - 1})
    result = await sync(activities, segment_snapshot(job_id, segment=3))
    assert result and result["push"]["withoutConsumer"] is True

    # A worker without heartbeats (the GPU worker) counts while it has read within consumerSeenMs...
    await ensure_group(redis_client, bridge.data_stream, bridge.workers_group)
    await redis_client.xreadgroup(bridge.workers_group, "gpu-1", {bridge.data_stream: ">"}, count=1)
    result = await sync(activities, segment_snapshot(job_id, segment=4))
    assert result and result["push"]["liveConsumers"] == 1
    # ...a reference worker whose heartbeat ran out does not, however recently it read.
    await redis_client.xreadgroup(bridge.workers_group, "ref-1", {bridge.data_stream: ">"}, count=1)
    result = await sync(activities, segment_snapshot(job_id, segment=5))
    assert result and result["push"]["liveConsumers"] == 1
    quiet = dataclasses.replace(bridge, consumer_seen_ms=1)
    result = await sync(BridgeActivities(redis_client, activities.store, quiet), segment_snapshot(job_id, segment=6))
    assert result and result["push"]["withoutConsumer"] is True


SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "nobody home"}}}


async def _sync_results(stack, job_id: str) -> list[dict]:
    """The results of the job's sync steps, as its Temporal history records them (local activity markers)."""
    history = await stack.temporal.get_workflow_handle(job_id).fetch_history()
    results = []
    for event in history.events:
        if not event.HasField("marker_recorded_event_attributes"):
            continue
        result = event.marker_recorded_event_attributes.details.get("result")
        if result is not None and result.payloads:
            results.append(json.loads(result.payloads[0].data or b"null"))
    return results


async def test_a_job_waiting_without_data_plane_shows_it_in_its_history(stack, llm, caplog):
    async with stack.no_dataplane():
        with caplog.at_level(logging.WARNING, logger="core.segment_entries"):
            job_id = await submit(stack, SADTALKER)
            await pushed_segment(stack.redis, job_id)

            async def reported():
                results = await _sync_results(stack, job_id)
                return [r for r in results if r and r.get("push")]

            pushes = await wait_for(reported, what="the push in the job's history")
        assert pushes[0]["push"]["withoutConsumer"] is True
        assert any(job_id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        await stack.temporal.get_workflow_handle(job_id).cancel()
        assert (await outcome(stack, job_id))[0] == "failed"


async def test_a_cancelled_jobs_unread_segment_is_withdrawn(stack, llm, caplog):
    async with stack.no_dataplane():
        with caplog.at_level(logging.INFO, logger="core.segment_entries"):
            job_id = await submit(stack, {**SADTALKER, "params": {"script": {"prompt": "withdraw me"}}})
            await pushed_segment(stack.redis, job_id)
            reply = await stack.api.post(f"/api/jobs/{job_id}/cancel")
            assert reply.status_code == 202, reply.text
            assert (await outcome(stack, job_id))[0] == "failed"
        left = [f for _, f in await stack.redis.xrange(BRIDGE.data_stream) if f.get("jobId") == job_id]
        assert left == [], "the unread segment of the cancelled job is still on the stream"
    assert any("withdrawn" in r.getMessage() and job_id in r.getMessage() for r in caplog.records)
    results = [r for r in await _sync_results(stack, job_id) if r and r.get("withdraw")]
    assert results and results[-1]["withdraw"]["outcome"] == "withdrawn"


async def _sync_markers(stack, job_id: str) -> list[tuple[dict, dict | None]]:
    """(marker data, result) of every sync step in the job's history; the data holds the step's attempt."""
    history = await stack.temporal.get_workflow_handle(job_id).fetch_history()
    markers = []
    for event in history.events:
        details = event.marker_recorded_event_attributes.details
        if event.HasField("marker_recorded_event_attributes") and "result" in details:
            data = json.loads(details["data"].payloads[0].data)
            result = details["result"].payloads
            markers.append((data, json.loads(result[0].data) if result and result[0].data else None))
    return markers


async def test_a_real_jobs_push_step_re_run_pushes_once(stack, store, llm):
    """The push step fails after its Redis writes (PostgreSQL refuses the snapshot once) and Temporal runs it
    again: the job still has exactly one entry on process:data, and completes."""
    marker = uuid.uuid4().hex
    fault = f"fail_push_{marker}"
    await store.pool.execute(
        f"""
        CREATE SEQUENCE {fault};
        CREATE FUNCTION {fault}() RETURNS trigger AS $$
        BEGIN
          IF NEW.last_graph::text LIKE '%{marker}%' AND NEW.last_graph->'metadata' ? 'handoff'
             AND nextval('{fault}') = 1 THEN
            PERFORM pg_sleep(0.3);  -- the step's Redis pipeline (the push) has run by now
            RAISE EXCEPTION 'injected: the snapshot of the push step is refused once';
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER {fault} BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION {fault}();
        """
    )
    try:
        job_id = await submit(stack, {**SADTALKER, "params": {"script": {"prompt": f"re-run {marker}"}}})
        assert await outcome(stack, job_id) == ("completed", None)
        calls = await store.pool.fetchval(f"SELECT last_value FROM {fault}")
    finally:
        await store.pool.execute(f"DROP TRIGGER {fault} ON jobs; DROP FUNCTION {fault}(); DROP SEQUENCE {fault};")
    entries = [f for _, f in await stack.redis.xrevrange(BRIDGE.data_stream, count=2000) if f.get("jobId") == job_id]
    assert len(entries) == 1, f"the segment was pushed {len(entries)} times"
    pushes = [(data, result) for data, result in await _sync_markers(stack, job_id) if result and result.get("push")]
    assert len(pushes) == 1 and pushes[0][0]["attempt"] == 2, "the push step ran twice (attempt 2 recorded)"
    assert pushes[0][1]["push"]["repeated"] is True, "the second run found the first run's push and added none"
    assert calls >= 2
