"""The date a relay gives a message survives a PostgreSQL outage: what waits in the backlog is written as dated then."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core.contracts import contracts
from core.redis import redis_client
from core.store import Store, connect_pool
from handoff.event_log import EventLog
from handoff.listener import EventListener
from tests.e2e import wait_for


async def drained_row(redis, store: Store, bridge, job_id: str) -> dict:
    """The job's one row, once a relay that PostgreSQL answers again has drained the backlog."""
    drain = asyncio.create_task(EventLog(redis, store, bridge, "relay-a").run())
    try:
        [event] = await wait_for(lambda: store.events(job_id), what="the event's row")
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    return event


@pytest.mark.parametrize("through_backlog", [False, True], ids=["direct", "backlog"])
@pytest.mark.parametrize("dated", ["a-year-ahead", "undated"])
async def test_a_message_keeps_the_date_it_was_heard_at_through_an_outage(
    store, database_url, redis_url, through_backlog, dated
):
    """A publisher's clock a year ahead, or no `created` at all: the row takes the time the relay heard the message,
    also when PostgreSQL was down then and the message waited in the backlog (before, the backlog's writer parsed the
    message again and took the publisher's date, or the time of the drain)."""
    bridge = dataclasses.replace(contracts().bridge, key_prefix=f"t:{uuid.uuid4().hex}:")  # a backlog of its own
    redis = redis_client(redis_url, block_ms=bridge.block_ms)
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    message = {"jobId": job_id, "data": "x"}
    if dated == "a-year-ahead":
        message["created"] = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    separator = "&" if "?" in database_url else "?"
    # A database that takes no writes (as a standby until promoted) is an outage: the round goes to the backlog.
    read_only = await connect_pool(f"{database_url}{separator}default_transaction_read_only=on", min_size=1, max_size=1)
    try:
        events = EventLog(redis, Store(read_only) if through_backlog else store, bridge, "relay-a")
        relay = EventListener(redis, events, None, bridge)  # type: ignore[arg-type]  # a data message signals nobody
        heard_after = datetime.now(UTC)
        await relay.on_message(bridge.channel("data", job_id).encode(), json.dumps(message).encode())
        heard_by = datetime.now(UTC)
        await asyncio.sleep(0.3)  # the drain comes later than the hearing, as after any outage
        await relay.write_held()
        event = await drained_row(redis, store, bridge, job_id)
    finally:
        await read_only.close()
        await redis.aclose()
    assert heard_after <= event["created"] <= heard_by, (event["created"], heard_after, heard_by)


async def test_an_entry_kept_before_the_backlog_carried_dates_is_written_as_before(store, redis_url):
    """Entries a relay of the previous release left in the backlog (channel and raw only) still land, dated by the
    message itself."""
    bridge = dataclasses.replace(contracts().bridge, key_prefix=f"t:{uuid.uuid4().hex}:")
    redis = redis_client(redis_url, block_ms=bridge.block_ms)
    job_id = str(uuid.uuid4())
    await store.create_job(job_id, {}, "custom")
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    raw = json.dumps({"jobId": job_id, "data": "old", "created": created.isoformat()})
    try:
        await redis.xadd(bridge.events_backlog, {"channel": bridge.channel("data", job_id), "raw": raw})
        event = await drained_row(redis, store, bridge, job_id)
    finally:
        await redis.aclose()
    assert event["created"] == created
