"""What a relay writes to PostgreSQL for the messages it hears, and when it signals a data-plane failure (issue 11:
fewer round trips per state change; and a failure heard before the job's first row)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from core.event_rows import Event
from core.messages import JobEvent
from core.redis import TRANSIENT
from core.store import Store, connect_pool
from handoff.event_log import EventLog, Heard
from handoff.listener import EventListener
from tests.e2e import BRIDGE, outcome, wait_for
from tests.test_exactly_once import (
    PYTHON_CHAIN,
    fail_in_redis_like_the_worker,
    listener,
    signals,
    start_python_job,
    status_message,
)
from workflows.names import CONTROL_SOURCE, DATAPLANE_FAILED


async def test_a_relay_leaves_the_workflows_own_status_to_its_snapshot(stack, store):
    """The workflow's status messages (`control-plane`, with its eventId) were written with the step's snapshot, so
    a relay writes nothing for them: one PostgreSQL write fewer per message. Everything else is recorded as before:
    a status without that source even with an eventId, and every data message (they do not say who sent them)."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    relay = listener(stack, store, "own-events")
    output = json.dumps({"nodeId": "script", "output": {"narration": "hello"}})
    own_data = json.dumps({"jobId": job_id, "data": output, "eventId": "run/data/script"})
    messages = [
        status_message(job_id, "running", source=CONTROL_SOURCE, eventId="run/status/running"),  # left alone
        status_message(job_id, "completed"),
        status_message(job_id, "failed", eventId="not/the/workflow"),  # no control-plane source: recorded
        (BRIDGE.channel("data", job_id), own_data),
        (BRIDGE.channel("data", job_id), json.dumps({"jobId": job_id, "data": output, "eventId": "a/worker/id"})),
    ]
    for channel, raw in messages:
        await relay.on_message(channel.encode(), raw.encode())
    await relay.write_held()  # the round the relay's recorder runs
    events = await store.events(job_id)
    assert sorted(e["status"] for e in events if e["status"]) == ["completed", "failed"], events
    assert [e["data"] for e in events if e["data"]] == [output, output], events


async def test_a_failure_heard_before_the_jobs_first_row_still_ends_the_wait(stack, store):
    """The step that pushes a job's first segment writes its row and the push at once, so a data plane that fails at
    once can report it before the row exists. No relay records a message of a job without a row, yet one of them
    must still signal the failure: the job would otherwise wait for its segment timeout (60 s here)."""
    async with stack.no_dataplane():
        job_id = await start_python_job(stack)
        await fail_in_redis_like_the_worker(stack, job_id)
        await wait_for(lambda: store.job(job_id), what=f"the row of job {job_id}")
        async with store.pool.acquire() as db:  # back to the moment before the row was written
            await db.execute("DELETE FROM jobs WHERE job_id = $1", uuid.UUID(job_id))
        channel, raw = status_message(job_id, "failed")
        relays = (listener(stack, store, "relay-a"), listener(stack, store, "relay-b"))
        await asyncio.gather(*(relay.on_message(channel, raw) for relay in relays))
        state, message = await outcome(stack, job_id, timeout=10)
    assert state == "failed" and message and "CUDA out of memory" in message
    # Neither could know it was first, so each signalled (the second may find the job already ended); the workflow
    # took the first and dropped any repeat.
    assert 1 <= await signals(stack.temporal, job_id, DATAPLANE_FAILED) <= 2


async def test_a_round_of_held_messages_is_written_in_one_round_trip(stack, database_url):
    """What a relay holds (data and status messages, each job's highest progress) goes to job_events in one
    statement call, which asyncpg sends as one round trip: one write per round instead of one per message."""
    pool = await connect_pool(database_url, min_size=1, max_size=1)  # one connection, so its log sees every query
    statements: list[str] = []
    try:
        async with pool.acquire() as db:
            db.add_query_logger(lambda record: statements.append(record.query))
        store = Store(pool)
        jobs = [str(uuid.uuid4()) for _ in range(3)]
        for job_id in jobs:
            await store.create_job(job_id, {}, "custom")
        relay = listener(stack, store, "one-round")
        for job_id in jobs:
            await relay.on_message(*status_message(job_id, "running"))
            for node in ("n1", "n2"):
                data = json.dumps({"nodeId": node, "output": {}})
                await relay.on_message(BRIDGE.channel("data", job_id), json.dumps({"jobId": job_id, "data": data}))
            for progress in (0.2, 0.4):
                payload = {"jobId": job_id, "progress": progress, "created": "1700000000000"}
                await relay.on_message(BRIDGE.channel("progress", job_id), json.dumps(payload))
        assert not [query for query in statements if "job_events" in query], "held until the round"
        await relay.write_held()
        for job_id in jobs:
            events = await store.events(job_id)
            outputs = [json.dumps({"nodeId": node, "output": {}}) for node in ("n1", "n2")]
            recorded = sorted(str(e["status"] or e["data"] or e["progress"]) for e in events)
            assert recorded == sorted(["running", *outputs, "0.4"]), events
        assert len([query for query in statements if "INSERT INTO job_events" in query]) == 1, statements
    finally:
        await pool.close()


async def test_a_row_postgresql_refuses_costs_only_itself(stack, store):
    """A round PostgreSQL refuses as a whole (here for one value jsonb cannot hold) is written again one message at
    a time: the refused one is logged and left out, the others land."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    log = EventLog(stack.redis, store, BRIDGE, "refused")
    channel = BRIDGE.channel("data", job_id)

    def data_message(text: str) -> Heard:
        event = JobEvent("data", job_id, None, None, text, None, fingerprint=f"data/{text!r}")
        return Heard(channel, json.dumps({"jobId": job_id, "data": text}), event)

    # The wire refuses a NUL before a relay holds it (test_hostile_streams); built here, past that check.
    await log.record_many([data_message("before"), data_message("a\x00b"), data_message("after")])
    assert sorted(e["data"] for e in await store.events(job_id)) == ["after", "before"]


async def test_a_relay_stopping_writes_what_it_holds(stack, store):
    """What a relay holds may have been heard by it alone, and pub/sub keeps nothing: stopped before its next round,
    its recorder writes what it holds first."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    relay = listener(stack, store, "stopping")
    recorder = asyncio.create_task(relay.record_held())
    await asyncio.sleep(0.05)  # the recorder now waits for something to be held
    await relay.on_message(*status_message(job_id, "running"))
    progress = {"jobId": job_id, "progress": 0.5, "created": "1700000000000"}
    await relay.on_message(BRIDGE.channel("progress", job_id), json.dumps(progress))
    recorder.cancel()  # before its round could run
    await asyncio.gather(recorder, return_exceptions=True)
    events = await store.events(job_id)
    assert sorted(str(e["status"] or e["progress"]) for e in events) == ["0.5", "running"], events


async def test_relays_writing_the_same_messages_at_once_never_deadlock(database_url):
    """Every relay hears every message and writes a round in one transaction, holding its rows until it commits. Its
    held progress is one row per job, in the order the jobs first reported in that round, so two relays whose rounds
    were cut differently hold the same jobs' progress in different orders (here opposite). Rows are taken job by job
    whatever that order, so neither waits for the other in a cycle (PostgreSQL would fail one after a second)."""
    pools = [await connect_pool(database_url, min_size=1, max_size=1) for _ in range(2)]
    try:
        store = Store(pools[0])
        for round_number in range(20):
            jobs = [str(uuid.uuid4()) for _ in range(20)]
            for job_id in jobs:
                await store.create_job(job_id, {}, "custom")
            progress = [Event(job_id, "progress/5s/1", progress=0.5, highest_progress=True) for job_id in jobs]
            await asyncio.gather(Store(pools[0]).apply_events(progress), Store(pools[1]).apply_events(progress[::-1]))
            assert [len(await store.events(job_id)) for job_id in jobs] == [1] * len(jobs), round_number
    finally:
        for pool in pools:
            await pool.close()


@pytest.mark.parametrize("with_progress", [True, False])
async def test_a_relays_round_and_the_workflows_step_never_deadlock(database_url, with_progress):
    """A step writes its job's row, then the data events it publishes; a relay that heard those messages writes the
    same events (in the order published) and, for progress, the job's row too. A round holds its rows until it
    commits, so it writes each job's progress (and so the job's row) first: neither then waits for the other in a
    cycle."""
    pools = [await connect_pool(database_url, min_size=1, max_size=1) for _ in range(2)]
    step, relay = Store(pools[0]), Store(pools[1])
    try:
        for _ in range(80):
            job_id = str(uuid.uuid4())
            await step.create_job(job_id, {}, "custom")
            outputs = [Event(job_id, f"data/{n}", data=f"output {n}", created=datetime.now(UTC)) for n in range(3)]
            progress = Event(job_id, "progress/2s/1", progress=0.5, highest_progress=True)
            await asyncio.gather(
                step.save_snapshot(job_id, "running", 0.5, {**PYTHON_CHAIN, "workflowId": job_id}, outputs),
                relay.apply_events([*outputs, progress] if with_progress else outputs),
            )
            assert len(await step.events(job_id)) == 3 + with_progress
    finally:
        for pool in pools:
            await pool.close()


async def test_a_relay_stopped_mid_round_writes_that_round_first(stack, store):
    """A round cut short by the stop (here waiting for a lock on the job's row) is held again, whole, and written by
    the stopping recorder once the row is free."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    relay = listener(stack, store, "stopped-mid-round")
    async with store.pool.acquire() as db:
        locked = db.transaction()
        await locked.start()
        await db.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", uuid.UUID(job_id))
        recorder = asyncio.create_task(relay.record_held())
        await relay.on_message(*status_message(job_id, "running"))
        progress = {"jobId": job_id, "progress": 0.5, "created": "1700000000000"}
        await relay.on_message(BRIDGE.channel("progress", job_id), json.dumps(progress))
        await asyncio.sleep(0.3)  # the round now waits for the row
        assert not relay.held and not relay.progress, "taken by the round"
        recorder.cancel()
        await asyncio.sleep(0.3)
        await locked.rollback()  # the row free again, within the recorder's time to stop
    await asyncio.gather(recorder, return_exceptions=True)
    events = await store.events(job_id)
    assert sorted(str(e["status"] or e["progress"]) for e in events) == ["0.5", "running"], events


async def test_rows_are_written_while_redis_is_down(stack, store):
    """PostgreSQL first: Redis being down (the progress keys wait) delays no job_events row."""
    from spinbot.ports import free_port

    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    relay = EventListener(down, EventLog(down, store, BRIDGE, "redis-down"), stack.temporal, BRIDGE)
    try:
        await relay.on_message(*status_message(job_id, "running"))
        progress = {"jobId": job_id, "progress": 0.5, "created": "1700000000000"}
        await relay.on_message(BRIDGE.channel("progress", job_id), json.dumps(progress))
        with pytest.raises(TRANSIENT):
            await relay.write_held()
        assert relay.progress and relay.held, "held again for the keys"
    finally:
        await down.aclose()
    events = await store.events(job_id)
    assert sorted(str(e["status"] or e["progress"]) for e in events) == ["0.5", "running"], events


async def test_a_round_postgresql_cannot_take_for_now_waits_in_the_backlog(stack, database_url, store):
    """A database that takes no writes for a while (here a read-only one, as a standby is until promoted) is an outage
    to wait out: the round goes to the backlog, not message by message into the log as refused."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    separator = "&" if "?" in database_url else "?"
    pool = await connect_pool(f"{database_url}{separator}default_transaction_read_only=on", min_size=1, max_size=1)
    bridge = dataclasses.replace(BRIDGE, key_prefix=f"t:{uuid.uuid4().hex}:")  # a backlog of its own
    try:
        log = EventLog(stack.redis, Store(pool), bridge, "read-only")
        channel = bridge.channel("data", job_id)
        messages = [(channel, json.dumps({"jobId": job_id, "data": n}), f"n{n}") for n in range(3)]
        await log.record_many(
            [
                Heard(c, raw, JobEvent("data", job_id, None, None, data, None, fingerprint=data))
                for c, raw, data in messages
            ]
        )
    finally:
        await pool.close()
    assert await stack.redis.xlen(bridge.events_backlog) == 3


async def test_a_message_without_a_time_is_dated_when_heard(stack, store):
    """`created` is optional on the wire: such a message's row takes the time the relay heard it, not the time its
    round was written (a round may wait, for a lock, an outage or the one before it)."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    relay = listener(stack, store, "undated")
    await relay.on_message(BRIDGE.channel("data", job_id), json.dumps({"jobId": job_id, "data": "undated"}))
    heard_by = datetime.now(UTC)
    await asyncio.sleep(0.3)
    await relay.write_held()
    [event] = await store.events(job_id)
    assert event["created"] <= heard_by, (event["created"], heard_by)


async def test_a_message_dated_in_the_future_is_dated_when_heard(stack, store):
    """A publisher whose clock ran a year ahead dated its row a year ahead: retention, which deletes by that time,
    kept the row a year past the job's window."""
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    relay = listener(stack, store, "ahead")
    ahead = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    await relay.on_message(BRIDGE.channel("data", job_id), json.dumps({"jobId": job_id, "data": "x", "created": ahead}))
    heard_by = datetime.now(UTC)
    await relay.write_held()
    [event] = await store.events(job_id)
    assert event["created"] <= heard_by, (event["created"], heard_by)
