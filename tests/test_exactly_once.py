"""Events once, failures noticed once and without races, waits bounded by declared time (issue 9)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from activities.bridge import BridgeActivities
from core.contracts import contracts, python_timeouts, service_runtimes
from core.metrics import PUBSUB_MESSAGES
from core.redis import redis_client
from core.store import Store, connect_pool
from core.temporal import RPC_TIMEOUT
from handoff.event_log import EventLog
from handoff.listener import UNREADABLE_FAILURE, EventListener
from tests.e2e import BRIDGE, outcome, pushed_segment, wait_for
from tests.holding_proxy import HoldingProxy
from workflows.inputs import JobInput, JobSnapshot
from workflows.names import CONTROL_SOURCE, DATAPLANE_FAILED, JOB_WORKFLOW, WORKFLOW_QUEUE

SPEC = contracts()
PYTHON_CHAIN = {
    "schema": "langgraph.v1",
    "context": {"pipeline": "custom"},
    "metadata": {},
    "nodes": [
        {"id": f"py{i}", "service": "dummy.dummy_task", "plane": "python", "status": "pending", "progressWeight": 1}
        for i in (1, 2, 3)
    ],
    "edges": [{"from": "py1", "to": "py2"}, {"from": "py2", "to": "py3"}],
}


async def start_python_job(stack, ceiling: float = 60.0, timeouts: dict | None = None) -> str:
    """Three python-plane nodes started straight on Temporal (the test plays, or withholds, the data plane)."""
    job_id = str(uuid.uuid4())
    graph = {**copy.deepcopy(PYTHON_CHAIN), "workflowId": job_id}
    job = JobInput(graph, service_runtimes(SPEC), ceiling, 1, python_timeouts(SPEC) if timeouts is None else timeouts)
    await stack.temporal.start_workflow(JOB_WORKFLOW, job, id=job_id, task_queue=WORKFLOW_QUEUE)
    return job_id


async def signals(client: Client, job_id: str, name: str) -> int:
    history = await client.get_workflow_handle(job_id).fetch_history()
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and event.workflow_execution_signaled_event_attributes.signal_name == name
    )


def listener(stack, store: Store, consumer: str) -> EventListener:
    return EventListener(stack.redis, EventLog(stack.redis, store, BRIDGE, consumer), stack.temporal, BRIDGE)


def status_message(job_id: str, status: str, **extra) -> tuple[str, str]:
    payload = {"jobId": job_id, "status": status, "created": "1700000000000", **extra}
    return BRIDGE.channel("status", job_id), json.dumps(payload)


async def fail_in_redis_like_the_worker(stack, job_id: str) -> None:
    """What the existing worker does on a node failure: the graph, py1 failed, into job:<id>."""
    graph = await pushed_segment(stack.redis, job_id)
    graph["nodes"][0].update(status="failed", error={"message": "CUDA out of memory", "code": "OOM"})
    await stack.redis.hset(BRIDGE.job_key(job_id), "graph", json.dumps(graph))


async def test_a_re_run_sync_step_records_each_event_once(stack, store):
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    bridge = BridgeActivities(stack.redis, store, BRIDGE)
    graph = {**copy.deepcopy(PYTHON_CHAIN), "workflowId": job_id}
    snap = JobSnapshot(job_id, graph, "running", 0.25, announce_status=True, announce_progress=True, at_ms=1234)
    for _ in range(3):  # Temporal re-runs a local activity whose completion was not recorded
        await ActivityEnvironment().run(bridge.sync_job, snap)

    async def both_recorded():
        events = await store.events(job_id)
        return events if {e["status"] for e in events} >= {"running"} and any(e["progress"] for e in events) else None

    await wait_for(both_recorded, what="the status and progress events")
    events = await store.events(job_id)
    assert sum(e["status"] == "running" for e in events) == 1
    assert sum(e["progress"] == 0.25 for e in events) == 1


async def test_a_sync_step_re_run_in_a_new_workflow_task_records_each_event_once(stack, store):
    """The workflow worker died before the step was recorded: the next one runs it again at another workflow time
    (a new `created` on every message), yet the status and the node output each land once. (Progress rows are
    coalesced per interval of the message's time by the event log; a re-run's progress may start a new one.)"""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    bridge = BridgeActivities(stack.redis, store, BRIDGE)
    graph = {**copy.deepcopy(PYTHON_CHAIN), "workflowId": job_id}
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, workflow_id=job_id, workflow_run_id=str(uuid.uuid4()))
    output = {"nodeId": "script", "output": {"narration": "hello"}}
    for at_ms in (1_000, 9_000):  # the first execution's task time, then the re-run's
        snap = JobSnapshot(job_id, graph, "running", 0.25, True, True, data=[output], at_ms=at_ms)
        await environment.run(bridge.sync_job, snap)

    async def all_recorded():
        events = await store.events(job_id)
        kinds = {"status" if e["status"] else "data" if e["data"] else "progress" for e in events}
        return events if kinds == {"status", "data", "progress"} else None

    await wait_for(all_recorded, what="the status, data and progress events")
    await asyncio.sleep(0.3)  # the re-run's messages, a moment behind
    events = await store.events(job_id)
    assert sum(e["status"] == "running" for e in events) == 1, events
    assert sum(e["data"] is not None for e in events) == 1, events


async def test_the_workflows_own_events_are_recorded_with_its_snapshot_when_no_relay_hears_them(stack, store):
    """Published while no relay listens (all restarting, or Redis restarting under them), and for a job whose row
    the same step creates: the status and the node output are in job_events all the same, once; a relay that
    hears them after all adds nothing."""
    tag = uuid.uuid4().hex
    unheard = dataclasses.replace(
        BRIDGE, status_channel=f"t:{tag}:status:", progress_channel=f"t:{tag}:progress:", data_channel=f"t:{tag}:data:"
    )
    job_id = str(uuid.uuid4())  # no row yet: the snapshot creates it
    graph = {**copy.deepcopy(PYTHON_CHAIN), "workflowId": job_id}
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, workflow_id=job_id, workflow_run_id=str(uuid.uuid4()))
    output = {"nodeId": "script", "output": {"narration": "hello"}}
    snap = JobSnapshot(job_id, graph, "running", 0.25, True, True, data=[output], at_ms=1_700_000_000_000)
    tap = stack.redis.pubsub()
    await tap.psubscribe(f"t:{tag}:*")
    try:
        await environment.run(BridgeActivities(stack.redis, store, unheard).sync_job, snap)
        events = await store.events(job_id)
        assert [e["status"] for e in events if e["status"]] == ["running"], events
        assert [json.loads(e["data"])["nodeId"] for e in events if e["data"]] == ["script"], events

        late = EventListener(stack.redis, EventLog(stack.redis, store, unheard, "late"), stack.temporal, unheard)
        heard, deadline = 0, asyncio.get_running_loop().time() + 10
        while heard < 3 and asyncio.get_running_loop().time() < deadline:
            message = await tap.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                await late.on_message(message["channel"], message["data"])
                heard += 1
        await late.write_held()
    finally:
        await tap.aclose()
    assert heard == 3  # data, progress, status
    assert len([e for e in await store.events(job_id) if e["status"] or e["data"]]) == 2


async def test_the_workflows_own_failed_is_never_taken_for_the_data_planes(stack, store):
    async with stack.no_dataplane():
        job_id = await start_python_job(stack)
        await fail_in_redis_like_the_worker(stack, job_id)
        await listener(stack, store, "t1").on_message(*status_message(job_id, "failed", source=CONTROL_SOURCE))
        assert await signals(stack.temporal, job_id, DATAPLANE_FAILED) == 0
        description = await stack.temporal.get_workflow_handle(job_id).describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        await stack.temporal.get_workflow_handle(job_id).cancel()


async def test_two_relays_hearing_one_failure_signal_it_once(stack, store):
    async with stack.no_dataplane():
        job_id = await start_python_job(stack)
        await fail_in_redis_like_the_worker(stack, job_id)
        # The step that pushed the segment writes the job's row meanwhile (started here without the API, which
        # writes it first): a relay records a message only for a job with a row.
        await wait_for(lambda: store.job(job_id), what=f"the row of job {job_id}")
        channel, raw = status_message(job_id, "failed")
        for relay in (listener(stack, store, "relay-a"), listener(stack, store, "relay-b")):
            await relay.on_message(channel, raw)
        state, message = await outcome(stack, job_id, timeout=10)
    assert state == "failed" and message and "CUDA out of memory" in message
    assert await signals(stack.temporal, job_id, DATAPLANE_FAILED) == 1


async def test_a_failure_heard_while_temporal_restarts_is_signalled_once_it_is_back(stack, store):
    """Before, the relay that recorded a data-plane failure first signalled it once: a Temporal that was restarting
    at that moment (UNAVAILABLE) lost the signal for good, and the job waited for its segment's timeout. And the
    first retried version read job:<id> again for each try, so a try made after the graph had moved on signalled
    that later graph (here: "the failed node's own error could not be read")."""
    host, port = stack.settings.temporal_address.rsplit(":", 1)
    async with stack.no_dataplane(), HoldingProxy(host, int(port)) as temporal:
        job_id = await start_python_job(stack)  # its segment's timeout: 60 s
        await fail_in_redis_like_the_worker(stack, job_id)
        await wait_for(lambda: store.job(job_id), what=f"the row of job {job_id}")
        client = await Client.connect(temporal.address, namespace=stack.temporal.namespace)
        temporal.refuse()  # Temporal restarts: open connections reset, new ones refused
        first = EventListener(stack.redis, EventLog(stack.redis, store, BRIDGE, "relay-a"), client, BRIDGE)
        channel, raw = status_message(job_id, "failed")
        await first.on_message(channel, raw)  # it records the failure first, so the signal is its to send
        await listener(stack, store, "relay-b").on_message(channel, raw)  # recorded already: leaves it
        await asyncio.sleep(2.0)  # its first tries are refused
        # job:<id> moves on meanwhile (a retry's new run pushing its own segment would write it): what is signalled
        # is what the failure left, never a later graph, whose segment it would fail.
        graph = json.loads(await stack.redis.hget(BRIDGE.job_key(job_id), "graph"))
        graph["nodes"][0].update(status="running", error=None)
        await stack.redis.hset(BRIDGE.job_key(job_id), "graph", json.dumps(graph))
        await asyncio.sleep(RPC_TIMEOUT.total_seconds() + 1)  # the first try gives up; the next goes out, refused
        temporal.accept()
        try:
            state, message = await outcome(stack, job_id, timeout=30)
        finally:
            await first.aclose()
    assert state == "failed" and message and "CUDA out of memory" in message
    assert await signals(stack.temporal, job_id, DATAPLANE_FAILED) == 1


async def test_a_failure_dated_before_any_job_is_recorded_and_signalled(stack, store):
    """Before, a `created` the schema takes but PostgreSQL cannot (year 1, fourteen hours east of UTC) made the
    failure's row raise, and no relay signalled it: the job waited for its segment's timeout."""
    async with stack.no_dataplane():
        job_id = await start_python_job(stack)
        await fail_in_redis_like_the_worker(stack, job_id)
        await wait_for(lambda: store.job(job_id), what=f"the row of job {job_id}")
        await listener(stack, store, "t1").on_message(
            *status_message(job_id, "failed", created="0001-01-01T00:00:00+14:00")
        )
        state, message = await outcome(stack, job_id, timeout=20)
    assert state == "failed" and message and "CUDA out of memory" in message
    dated = [event["created"] for event in await store.events(job_id) if event["status"] == "failed"]
    assert dated and all(at > datetime.now(UTC) - timedelta(minutes=5) for at in dated)  # dated when heard


async def test_a_failure_whose_graph_was_overwritten_still_ends_the_wait(stack, store):
    """The worker's failed graph in job:<id> was replaced by ours before the relay read it."""
    async with stack.no_dataplane():
        job_id = await start_python_job(stack, ceiling=600)
        await pushed_segment(stack.redis, job_id)  # job:<id> holds the workflow's graph: nothing failed in it
        await listener(stack, store, "t1").on_message(*status_message(job_id, "failed"))
        state, message = await outcome(stack, job_id, timeout=10)
    assert state == "failed" and message and UNREADABLE_FAILURE in message


@pytest.mark.parametrize(
    "timeouts, expected",
    [({"dummy.dummy_task": 0.3}, "within 0.9s"), ({"dummy.dummy_task": -1.0}, "within 1.5s")],
    ids=["declared", "no-limit-takes-the-ceiling"],
)
async def test_a_segment_waits_as_long_as_its_nodes_declare(stack, timeouts, expected):
    async with stack.no_dataplane():
        job_id = await start_python_job(stack, ceiling=1.5, timeouts=timeouts)
        state, message = await outcome(stack, job_id, timeout=20)
    assert state == "failed" and message and expected in message


async def test_events_published_while_postgresql_is_down_are_recorded_when_it_returns(stack, tmp_path):
    from core.migrate import migrate_url
    from spinbot.services import Postgres

    pg = Postgres(tmp_path / "pg")
    await migrate_url(pg.url)
    pool = await connect_pool(pg.url)
    store = Store(pool)
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    # A backlog of its own: the session's relays drain theirs into the session's database.
    bridge = dataclasses.replace(BRIDGE, key_prefix=f"t:{uuid.uuid4().hex}:")
    log = EventLog(stack.redis, store, bridge, "outage-test")
    relay = EventListener(stack.redis, log, stack.temporal, bridge)
    try:
        pg.stop()
        # Node outputs: each is an event of its own (progress is folded to its highest, see the next test).
        for node in ("n1", "n2", "n3", "n4", "n5"):
            channel = BRIDGE.channel("data", job_id)
            await relay.on_message(channel, json.dumps({"jobId": job_id, "data": node, "created": "1"}))
        await relay.write_held()  # one round: PostgreSQL is down, so all five go to the backlog
        assert await stack.redis.xlen(bridge.events_backlog) == 5
        pg = Postgres(tmp_path / "pg")  # the same data folder, started again
        draining = asyncio.create_task(log.run())
        try:

            async def all_five():
                events = await store.events(job_id)
                return events if len(events) == 5 else None

            events = await wait_for(all_five, timeout=30, what="the five delayed events")
        finally:
            draining.cancel()
        assert sorted(e["data"] for e in events) == ["n1", "n2", "n3", "n4", "n5"]
    finally:
        await pool.close()
        pg.stop()


async def test_a_burst_of_progress_is_folded_to_its_highest(stack, store):
    """A data plane's burst of progress: the keys and the job's progress row get its highest value, in fewer writes
    than messages; a lone message later is written at once."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    bridge = dataclasses.replace(BRIDGE, key_prefix=f"t:{uuid.uuid4().hex}:")
    relay = EventListener(stack.redis, EventLog(stack.redis, store, bridge, "burst"), stack.temporal, bridge)
    folded = PUBSUB_MESSAGES.labels(kind="progress_folded")._value.get()
    recorder = asyncio.create_task(relay.record_held())
    try:
        channel = bridge.channel("progress", job_id)
        for step in range(1, 101):
            await relay.on_message(channel, json.dumps({"jobId": job_id, "progress": step / 200, "created": "1"}))

        async def highest_recorded():
            events = await store.events(job_id)
            return events if any(e["progress"] == 0.5 for e in events) else None

        await wait_for(highest_recorded, timeout=10, what="the burst's highest progress")
        assert PUBSUB_MESSAGES.labels(kind="progress_folded")._value.get() - folded >= 90, "written one by one"
        await relay.on_message(channel, json.dumps({"jobId": job_id, "progress": 0.75, "created": "2"}))

        async def lone_recorded():
            return [e for e in await store.events(job_id) if e["progress"] == 0.75]

        await wait_for(lone_recorded, timeout=10, what="a lone progress message")
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)


async def test_progress_held_while_redis_is_down_is_written_when_it_returns(stack, store, tmp_path):
    """The progress recorder survives a Redis outage: what it held waits (folded with what comes meanwhile), its
    health says why, and it is written once Redis answers again."""
    import redis.asyncio as aioredis

    from core.supervise import TaskHealth
    from spinbot.ports import free_port
    from spinbot.services import start_redis

    port = free_port()
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    # Nothing listens there yet; a plain client, whose commands fail at once instead of retrying for seconds
    # (our clients retry for ~4-7 s, so only a longer outage reaches the recorder).
    own = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    relay = EventListener(own, EventLog(own, store, BRIDGE, "outage"), stack.temporal, BRIDGE)
    health = TaskHealth("event-recorder")
    recorder = asyncio.create_task(relay.record_held(health))
    channel = BRIDGE.channel("progress", job_id)
    server = None
    try:
        await wait_for(lambda: health.up, timeout=5, what="the recorder to start")
        await relay.on_message(channel, json.dumps({"jobId": job_id, "progress": 0.3, "created": "1"}))
        await wait_for(lambda: not health.up, timeout=20, what="the recorder to report Redis down")
        await relay.on_message(channel, json.dumps({"jobId": job_id, "progress": 0.4, "created": "1"}))
        assert not recorder.done() and relay.progress[job_id].event.progress == 0.4, "held, folded with the newer"
        server = start_redis(tmp_path / "redis", port, persist=False)

        async def recorded():
            return [e for e in await store.events(job_id) if e["progress"] == 0.4]

        await wait_for(recorded, timeout=30, what="the held progress once Redis is back")
        # Its row is written first; the round (its Redis keys) may still be under way.
        await wait_for(lambda: health.up, timeout=10, what="the recorder to report itself serving again")
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        await own.aclose()
        if server:
            server.stop()


async def test_a_recorder_stopped_in_the_middle_of_a_round_stops(stack, store):
    """Stopping a relay cancels its recorder, often mid-round. It once ran on instead, now and then, waiting for more
    to write for ever (redis-py lost the cancel: see core.redis.KeepsCancels), so the relay never finished stopping."""
    redis = redis_client(stack.settings.redis_url, block_ms=BRIDGE.block_ms)  # as a relay opens its own
    ran_on = 0
    try:
        for _ in range(200):
            job_id = str(uuid.uuid4())
            await store.create_job(job_id, {}, "custom")
            relay = EventListener(redis, EventLog(redis, store, BRIDGE, "stop"), stack.temporal, BRIDGE)
            channel = BRIDGE.channel("progress", job_id)
            await relay.on_message(channel, json.dumps({"jobId": job_id, "progress": 0.3, "created": "1"}))
            recorder = asyncio.create_task(relay.record_held())
            await asyncio.sleep(random.random() * 0.01)
            recorder.cancel()
            done, _ = await asyncio.wait([recorder], timeout=3)
            if not done:
                ran_on += 1
                recorder.cancel()
    finally:
        await redis.aclose()
    assert ran_on == 0, f"{ran_on} of 200 recorders ran on after being stopped"
