"""Cost grows with the work, not with time (issue 11): streams trimmed once every group is done with an entry,
dead letters capped and aged, progress coalesced in job_events, finished jobs' events and keys expire."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.testing import ActivityEnvironment

from activities.bridge import BridgeActivities
from core import jobkeys
from core.contracts import Bridge
from core.event_rows import Event
from core.messages import parse_created, parse_event
from core.metrics import JOB_EVENTS_DELETED, STREAM_ENTRIES_TRIMMED
from core.migrate import migrate_url
from core.redis import redis_client
from core.retry import call_with_retry
from core.store import UNAVAILABLE, Store, connect_pool
from core.supervise import Supervisor
from handoff.event_log import EventLog
from handoff.retention import Retention, RetentionPolicy
from handoff.streams import dead_letter
from spinbot.ports import free_port
from spinbot.services import Postgres, start_redis
from tests.e2e import BRIDGE, submit, wait_for
from tests.ws_clients import ws_client
from workflows.inputs import JobSnapshot

pytestmark = pytest.mark.timeout(90)

MINUTE_MS = 60_000
ONE_NODE = {
    "nodes": [{"id": "a", "service": "llm.generate_script", "plane": "node", "status": "completed"}],
    "edges": [],
}
DAY_MS = 24 * 3600 * 1000


def own_bridge() -> Bridge:
    """The shipped bridge with streams, keys and the pub/sub dead-letter stream of this test's own."""
    tag = f"t:{uuid.uuid4().hex[:10]}:"
    kind = type("OwnBridge", (Bridge,), {"pubsub_source": f"{tag}channel"})
    values = {f.name: getattr(BRIDGE, f.name) for f in dataclasses.fields(Bridge)}
    return kind(**{**values, "data_stream": f"{tag}data", "control_stream": f"{tag}control", "key_prefix": tag})


async def redis_now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def add_at(redis: aioredis.Redis, stream: str, ms: int, count: int) -> list[str]:
    """`count` entries with ids at `ms` (the time Redis would have given them then)."""
    return [str(await redis.xadd(stream, {"n": str(i)}, id=f"{ms}-{i}")) for i in range(count)]


def ids_of(rows) -> list[str]:
    return [entry_id for entry_id, _ in rows]


async def read(redis: aioredis.Redis, stream: str, group: str, count: int) -> list[str]:
    reply: Any = await redis.xreadgroup(group, "reader", {stream: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


async def test_acked_entries_past_the_window_are_trimmed_and_unread_or_pending_ones_kept(redis_client, store):
    bridge = own_bridge()
    redis, stream = redis_client, bridge.data_stream
    now = await redis_now_ms(redis)
    old = await add_at(redis, stream, now - 10 * MINUTE_MS, 10)
    new = [await redis.xadd(stream, {"n": "new"}) for _ in range(2)]
    for group in ("slow", "fast"):
        await redis.xgroup_create(stream, group, id="0")
    slow = await read(redis, stream, "slow", 6)  # read old[0..5]
    await redis.xack(stream, "slow", *slow[:4])  # old[4], old[5] stay pending
    await redis.xack(stream, "fast", *await read(redis, stream, "fast", 12))
    # Old entries in streams nobody reads yet (no group), or that a group has not read, stay too.
    await add_at(redis, bridge.control_stream, now - 10 * MINUTE_MS, 3)
    await add_at(redis, bridge.events_backlog, now - 10 * MINUTE_MS, 3)
    await redis.xgroup_create(bridge.events_backlog, "recorders", id="0")
    retention = Retention(redis, store, bridge, RetentionPolicy(stream_ms=MINUTE_MS))
    trimmed_before = STREAM_ENTRIES_TRIMMED.labels(stream=stream)._value.get()

    swept = await retention.sweep()

    assert ids_of(await redis.xrange(stream)) == old[4:] + new  # up to the oldest entry pending in "slow"
    assert swept.trimmed[stream] == 4
    assert swept.trimmed[bridge.control_stream] == 0 and await redis.xlen(bridge.control_stream) == 3
    assert swept.trimmed[bridge.events_backlog] == 0 and await redis.xlen(bridge.events_backlog) == 3
    assert STREAM_ENTRIES_TRIMMED.labels(stream=stream)._value.get() == trimmed_before + 4

    await redis.xack(stream, "slow", *slow[4:])  # done with what it holds, but has not read old[6..9]
    await retention.sweep()
    assert ids_of(await redis.xrange(stream)) == old[6:] + new

    await redis.xack(stream, "slow", *await read(redis, stream, "slow", 12))
    await retention.sweep()
    assert ids_of(await redis.xrange(stream)) == new  # acked by all, but inside the window


async def test_a_segment_held_by_a_dead_worker_holds_its_stream_back_no_longer_than_the_segment_ceiling(
    redis_client, store, caplog
):
    """A GPU worker that died holding a segment (it has no heartbeat, so it is never judged dead) left the entry
    pending for good, and every entry after it was kept: whole graphs, up to the push-time cap of ~100,000."""
    bridge = own_bridge()
    redis, stream = redis_client, bridge.data_stream
    now = await redis_now_ms(redis)
    await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    await add_at(redis, stream, now - 3 * 60 * MINUTE_MS, 2)  # old[0], old[1]
    recent = await add_at(redis, stream, now - 30 * MINUTE_MS, 2)
    await redis.xreadgroup("workers", "gpu-died", {stream: ">"}, count=1)  # old[0]: pending for good
    await redis.xack(stream, "workers", *await read(redis, stream, "workers", 2))  # old[1], recent[0]
    await read(redis, stream, "workers", 1)  # recent[1]: pending on a live worker, inside the ceiling
    # Handbacks nobody reads past the ceiling go too; events waiting out a PostgreSQL outage never do.
    await add_at(redis, bridge.control_stream, now - 3 * 60 * MINUTE_MS, 2)
    await add_at(redis, bridge.control_stream, now - 30 * MINUTE_MS, 1)
    await redis.xgroup_create(bridge.events_backlog, "recorders", id="0", mkstream=True)
    await add_at(redis, bridge.events_backlog, now - 3 * 60 * MINUTE_MS, 1)
    await read(redis, bridge.events_backlog, "recorders", 1)
    policy = RetentionPolicy(stream_ms=MINUTE_MS, segment_ms=60 * MINUTE_MS)

    retention = Retention(redis, store, bridge, policy)
    with caplog.at_level("WARNING", logger="handoff.retention"):
        swept = await retention.sweep()

    # Acked past the ceiling, the dead worker's entry no longer holds back even recent[0], read and acked.
    assert ids_of(await redis.xrange(stream)) == recent[1:], "the dead worker's entry still held the stream back"
    assert swept.trimmed[stream] == 3
    pending = await redis.xpending_range(stream, "workers", "-", "+", 10)
    assert [row["message_id"] for row in pending] == [recent[1]]
    assert len(await redis.xrange(bridge.control_stream)) == 1
    assert await redis.xlen(bridge.events_backlog) == 1
    warned = [r for r in caplog.records if stream in r.getMessage() and "not read or acked" in r.getMessage()]
    assert len(warned) == 1
    caplog.clear()
    await retention.sweep()  # said once: nothing past the ceiling is left to cut
    assert not [r for r in caplog.records if "not read or acked" in r.getMessage()]


async def test_relays_gone_for_good_are_forgotten_by_their_groups(redis_client, store):
    """Every relay process joins process:control's group and the backlog's under a name of its own
    (relay-<host>-<pid>). Before, nothing removed them: each restart or deploy left two consumers for good."""
    bridge, redis = own_bridge(), redis_client
    groups = {bridge.control_stream: bridge.control_group, bridge.events_backlog: "recorders"}

    async def handed(group: str, stream: str, consumer: str) -> str:
        """A new entry read by `consumer` (Redis makes a consumer as it first hands it an entry)."""
        await redis.xadd(stream, {"n": consumer})
        [[_, [(entry_id, _)]]] = await redis.xreadgroup(group, consumer, {stream: ">"}, count=1)
        return entry_id

    for stream, group in groups.items():
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        await redis.xack(stream, group, await handed(group, stream, "relay-gone"))  # did its work, then left
        await handed(group, stream, "relay-holding")  # died holding an entry: a takeover's to claim
    await asyncio.sleep(2.5)
    for stream, group in groups.items():  # a live relay: it has just been handed an entry, and acked it
        await redis.xack(stream, group, await handed(group, stream, "relay-live"))
    swept = await Retention(redis, store, bridge, RetentionPolicy(stream_ms=2000)).sweep()
    for stream, group in groups.items():
        names = sorted(consumer["name"] for consumer in await redis.xinfo_consumers(stream, group))
        assert names == ["relay-holding", "relay-live"], stream  # one holding an entry waits for a takeover
    assert swept.consumers_forgotten == 2


async def test_dead_letters_are_capped_and_aged(redis_client, store):
    bridge = own_bridge()
    redis = redis_client
    capped, aged = bridge.dead_letter(bridge.control_stream), bridge.dead_letter(bridge.pubsub_source)
    now = await redis_now_ms(redis)
    await add_at(redis, capped, now - 8 * DAY_MS, 3)
    await add_at(redis, aged, now - 8 * DAY_MS, 3)
    for n in range(12):
        await dead_letter(redis, capped, capped, {"graph": f"bad {n}"}, "not a graph", max_entries=5)
    for n in range(2):
        await dead_letter(redis, aged, aged, {"data": f"bad {n}"}, "not JSON", max_entries=5)
    policy = RetentionPolicy(dead_letter_entries=5, dead_letter_ms=7 * DAY_MS)

    swept = await Retention(redis, store, bridge, policy).sweep()

    letters = await redis.xrange(capped)
    assert [fields["graph"] for _, fields in letters] == [f"bad {n}" for n in range(7, 12)]  # the newest five
    assert [fields["data"] for _, fields in await redis.xrange(aged)] == ["bad 0", "bad 1"]  # a week old: gone
    assert swept.trimmed[aged] == 3


async def test_a_burst_of_llm_progress_ticks_leaves_one_row_per_interval_while_clients_see_every_tick(
    stack, llm, store
):
    llm.delay = 3.0  # about six ticks of 0.5 s
    seconds = stack.settings.progress_event_seconds
    assert seconds == 5.0  # the default, as the stack's relay runs it
    pubsub = stack.redis.pubsub()
    await pubsub.psubscribe(BRIDGE.channel("progress", "*"))
    try:
        request = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "ticks"}}}
        job_id = await submit(stack, request)
        async with ws_client(stack.api_url) as ws:
            first = await ws.subscribe(job_id)
            updates = [first, *await ws.updates_until(job_id, "completed", timeout=30)]
        published = []
        while message := await pubsub.get_message(timeout=1.0):  # until a second of silence
            payload = json.loads(message["data"]) if message["type"] == "pmessage" else {}
            if payload.get("jobId") == job_id:
                published.append(payload)
    finally:
        await pubsub.aclose()

    ticks = [m["progress"] for m in published if 0 < m["progress"] < 0.05]  # while the script node waited
    assert len(ticks) >= 4, published
    after_subscribing = [t for t in ticks if t > first["progress"]]
    seen = {u["progress"] for u in updates}
    assert len(after_subscribing) >= 3 and not [t for t in after_subscribing if t not in seen], (ticks, updates)

    by_interval: dict[int, float] = {}  # what job_events must hold: the highest progress of each interval
    for m in published:
        created = parse_created(m["created"])
        assert created is not None
        interval = int(created.timestamp() // seconds)
        by_interval[interval] = max(by_interval.get(interval, 0.0), float(m["progress"]))

    async def progress_rows():
        rows = await store.pool.fetch(
            "SELECT progress FROM job_events WHERE job_id = $1 AND progress IS NOT NULL", uuid.UUID(job_id)
        )
        values = [row["progress"] for row in rows]
        return values if sorted(values) == sorted(by_interval.values()) else None

    rows = await wait_for(progress_rows, timeout=10, what=f"one progress row per interval: {by_interval}")
    assert len(rows) == len(by_interval) < len(published) / 2  # a job of ~3.5 s spans one or two intervals of 5 s
    assert max(rows) == 1.0
    assert 0 < await stack.redis.ttl(BRIDGE.job_key(job_id)) <= stack.settings.finished_key_seconds


async def test_coalesced_progress_lands_once_per_interval_whatever_relays_hear_it(redis_client, store, job_id):
    await store.create_job(job_id, {}, "custom")
    start = 1_700_000_000_000  # on a 5 s boundary
    messages = [
        (BRIDGE.channel("progress", job_id), json.dumps({"jobId": job_id, "progress": p, "created": str(start + ms)}))
        for ms, p in ((0, 0.1), (1000, 0.3), (4000, 0.2), (5000, 0.4), (9999, 0.6), (12000, 0.7))
    ]
    status = (BRIDGE.channel("status", job_id), json.dumps({"jobId": job_id, "status": "running", "created": "1"}))
    relays = [EventLog(redis_client, store, BRIDGE, name, progress_seconds=5) for name in ("a", "b")]
    for relay, order in zip(relays, ([*messages, status], [status, *reversed(messages)] * 2), strict=True):
        for channel, raw in order:  # one relay hears each message once, the other twice and backwards
            await relay.record(channel, raw, parse_event(BRIDGE, channel, raw))

    events = await store.events(job_id)
    assert sorted(e["progress"] for e in events if e["progress"] is not None) == [0.3, 0.6, 0.7]
    assert [e["status"] for e in events if e["status"]] == ["running"]
    first = next(e for e in events if e["progress"] == 0.3)
    assert first["created"] == datetime.fromtimestamp((start + 1000) / 1000, tz=UTC)  # when 0.3 was reported
    progress_ids = [e["event_id"] for e in events if e["progress"] is not None]  # newest first, by time and by id
    assert progress_ids == sorted(progress_ids, reverse=True)


async def age_job(store: Store, job_id: str, hours: float) -> None:
    """Make the job, and every event of it, `hours` old (its finish included)."""
    then = datetime.now(UTC) - timedelta(hours=hours)
    await store.pool.execute("UPDATE jobs SET updated = $2 WHERE job_id = $1", uuid.UUID(job_id), then)
    await store.pool.execute("UPDATE job_events SET created = $2 WHERE job_id = $1", uuid.UUID(job_id), then)


async def job_with_events(store: Store, status: str, finished_hours_ago: float, events_hours_ago: float) -> str:
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    await store.save_snapshot(job_id, status, 0.5, ONE_NODE)
    for n in range(3):
        await store.apply_event(Event(job_id, f"f{n}", data=f"note {n}"))
    await age_job(store, job_id, events_hours_ago)
    await store.pool.execute(
        "UPDATE jobs SET updated = now() - make_interval(hours => $2) WHERE job_id = $1",
        uuid.UUID(job_id),
        finished_hours_ago,
    )
    return job_id


async def test_retention_deletes_old_finished_jobs_events_and_keeps_running_and_recent_ones(redis_client, store):
    done = await job_with_events(store, "completed", finished_hours_ago=3, events_hours_ago=3)
    failed = await job_with_events(store, "failed", finished_hours_ago=3, events_hours_ago=4)
    running = await job_with_events(store, "running", finished_hours_ago=3, events_hours_ago=3)
    recent = await job_with_events(store, "completed", finished_hours_ago=0, events_hours_ago=3)
    retention = Retention(redis_client, store, own_bridge(), RetentionPolicy(finished_seconds=2 * 3600))
    deleted_before = JOB_EVENTS_DELETED._value.get()

    swept = await retention.sweep()

    assert swept.events_deleted == 6 and JOB_EVENTS_DELETED._value.get() == deleted_before + 6
    assert await store.events(done) == [] and await store.events(failed) == []
    assert (await store.job(done))["status"] == "completed"  # the job itself stays
    assert len(await store.events(running)) == 3 and len(await store.events(recent)) == 3
    assert (await retention.sweep()).events_deleted == 0


async def test_a_stream_redis_refuses_to_trim_leaves_the_rest_of_the_round_going(redis_client, store, caplog):
    """A key of another type under a stream's name made Redis refuse its trim, and the whole round stopped there:
    no other stream trimmed, no job_events row deleted, round after round."""
    bridge = own_bridge()
    await redis_client.set(bridge.control_stream, "not a stream")
    now = await redis_now_ms(redis_client)
    await redis_client.xgroup_create(bridge.data_stream, "workers", id="0", mkstream=True)
    old = await add_at(redis_client, bridge.data_stream, now - 10 * MINUTE_MS, 2)
    await redis_client.xack(bridge.data_stream, "workers", *await read(redis_client, bridge.data_stream, "workers", 2))
    done = await job_with_events(store, "completed", finished_hours_ago=3, events_hours_ago=3)
    retention = Retention(redis_client, store, bridge, RetentionPolicy(stream_ms=MINUTE_MS, finished_seconds=3600))

    with caplog.at_level("ERROR", logger="handoff.retention"):
        swept = await retention.sweep()

    assert swept.trimmed[bridge.data_stream] == len(old) and await store.events(done) == []
    assert bridge.control_stream not in swept.trimmed
    assert [r for r in caplog.records if bridge.control_stream in r.getMessage() and "WRONGTYPE" in r.getMessage()]


async def test_a_finished_jobs_keys_expire_soon_and_late_writes_of_the_api_do_not_extend_them(stack, store, job_id):
    await store.create_job(job_id, {}, "custom")
    bridge = BridgeActivities(stack.redis, store, BRIDGE, finished_key_seconds=60)
    graph = {"schema": "langgraph.v1", "workflowId": job_id, "context": {}, "metadata": {}, **copy.deepcopy(ONE_NODE)}
    keys = [BRIDGE.job_key(job_id), BRIDGE.status_key(job_id), BRIDGE.progress_key(job_id)]

    await ActivityEnvironment().run(bridge.sync_job, JobSnapshot(job_id, graph, "running", 0.5))
    assert all(ttl > 60 for ttl in [await stack.redis.ttl(key) for key in keys])  # a running job's: jobs.ttl

    await ActivityEnvironment().run(bridge.sync_job, JobSnapshot(job_id, copy.deepcopy(graph), "completed", 1.0))
    assert all(0 < ttl <= 60 for ttl in [await stack.redis.ttl(key) for key in keys])

    pipe = stack.redis.pipeline(transaction=False)  # the API's acceptance, arriving after a fast job finished
    jobkeys.set_graph_if_absent(pipe, BRIDGE, job_id, json.dumps(graph), "1")
    jobkeys.advance_status(pipe, BRIDGE, job_id, "advertised")
    jobkeys.raise_progress(pipe, BRIDGE, job_id, 0.0)
    await pipe.execute()
    assert all(0 < ttl <= 60 for ttl in [await stack.redis.ttl(key) for key in keys])
    assert await stack.redis.get(BRIDGE.status_key(job_id)) == "completed"


async def test_late_progress_of_a_failed_job_does_not_extend_its_keys(stack, store, job_id):
    """A failed job whose node-plane node was still running has room under its ceiling: a late report raised its
    progress and gave the key jobs.ttl (12 h) again."""
    await store.create_job(job_id, {}, "custom")
    bridge = BridgeActivities(stack.redis, store, BRIDGE, finished_key_seconds=60)
    graph = {"schema": "langgraph.v1", "workflowId": job_id, "context": {}, "metadata": {}, **copy.deepcopy(ONE_NODE)}
    graph["nodes"][0]["status"] = "running"
    await ActivityEnvironment().run(bridge.sync_job, JobSnapshot(job_id, graph, "failed", 0.0))

    pipe = stack.redis.pipeline(transaction=False)
    jobkeys.report_progress(pipe, BRIDGE, job_id, 0.5)
    await pipe.execute()

    assert await stack.redis.get(BRIDGE.progress_key(job_id)) == "0.5"  # still raised, as before
    assert 0 < await stack.redis.ttl(BRIDGE.progress_key(job_id)) <= 60


async def test_the_cleanup_task_survives_redis_and_postgresql_outages(tmp_path):
    port = free_port()
    redis_server = start_redis(tmp_path / "redis", port, persist=False)
    pg = Postgres(tmp_path / "pg")
    await migrate_url(pg.url)
    pool = await connect_pool(pg.url)
    redis = aioredis.from_url(redis_server.url, decode_responses=True)  # no retries: an outage fails a round fast
    ours = redis_client(redis_server.url)  # the test's own writes wait the restart out
    bridge = own_bridge()
    policy = RetentionPolicy(stream_ms=0, finished_seconds=3600, interval_seconds=0.1)
    tasks = Supervisor()
    health = tasks.start("retention", Retention(redis, Store(pool), bridge, policy).run)
    try:
        await asyncio.wait_for(health.is_up.wait(), 10)
        redis_server.stop()
        pg.stop()
        await wait_for(lambda: _down(health), timeout=20, what="the cleanup to report the outage")

        redis_server = start_redis(tmp_path / "redis", port, persist=False)
        pg = Postgres(tmp_path / "pg")
        await ours.xadd(bridge.control_stream, {"n": "1"})
        await ours.xgroup_create(bridge.control_stream, "g", id="0")
        await ours.xack(bridge.control_stream, "g", *await read(ours, bridge.control_stream, "g", 1))
        await call_with_retry("PostgreSQL back", UNAVAILABLE, lambda: pool.fetchval("SELECT 1"))
        old = await job_with_events(Store(pool), "completed", finished_hours_ago=2, events_hours_ago=2)

        async def cleaned():
            gone = await ours.xlen(bridge.control_stream) == 0 and not await Store(pool).events(old)
            return gone and health.up

        await wait_for(cleaned, timeout=30, what="the cleanup to work again")
        assert health.restarts == 0  # it reported the outage and went on; it never died
    finally:
        await tasks.stop()
        await redis.aclose()
        await ours.aclose()
        await pool.close()
        pg.stop()
        redis_server.stop()


async def _down(health) -> bool:
    return not health.up and health.state != "starting"
