"""`spinbot relay`: the handback relay, the pub/sub listener, the retention cleanup and the search for jobs whose
workflow ended outside the job, in one process (run as many as you like)."""

from __future__ import annotations

import asyncio
import os
import socket

from temporalio.client import Client

from core.contracts import contracts
from core.pubsub import subscribe_forever
from core.redis import redis_client
from core.settings import Settings
from core.store import Store, connect_pool
from core.supervise import Supervisor, TaskHealth
from core.wire import WireLimits
from handoff.event_log import EventLog
from handoff.listener import EventListener
from handoff.relay import HandbackRelay
from handoff.retention import Retention, RetentionPolicy
from handoff.stranded import StrandedJobs

START_TIMEOUT = 30.0


async def run_relay(
    settings: Settings, client: Client, consumer: str | None = None, ready: asyncio.Event | None = None
) -> None:
    """Every loop, each supervised (restarted with backoff when it dies); `ready` is set once all serve."""
    spec = contracts()
    limits = WireLimits.of(settings)
    # Blocking stream reads need a socket timeout longer than their BLOCK.
    redis = redis_client(settings.redis_url, block_ms=spec.bridge.block_ms)
    pool = await connect_pool(settings.database_url)
    consumer = consumer or f"relay-{socket.gethostname()}-{os.getpid()}"
    relay = HandbackRelay(redis, client, spec.bridge, consumer, limits)
    store = Store(pool)
    events = EventLog(redis, store, spec.bridge, consumer, settings.progress_event_seconds)
    retention = Retention(redis, store, spec.bridge, RetentionPolicy.of(settings))
    listener = EventListener(redis, events, client, spec.bridge, limits)
    interval = settings.cleanup_interval_seconds
    stranded = StrandedJobs(
        client, redis, store, spec.bridge, interval, settings.finished_key_seconds,
        retry_settled_seconds=settings.retry_settled_seconds,
    )  # fmt: skip

    async def listen(health: TaskHealth) -> None:
        await subscribe_forever(settings.redis_url, spec.bridge.channel_patterns, listener.on_message, health)

    tasks = Supervisor()
    tasks.start("handback-relay", relay.run)
    tasks.start("event-listener", listen)
    tasks.start("event-recorder", listener.record_held)
    tasks.start("event-backlog", events.run)
    tasks.start("retention", retention.run)
    tasks.start("stranded-jobs", stranded.run)
    try:
        if ready:
            await tasks.wait_up(START_TIMEOUT)
            ready.set()
        await asyncio.gather(*tasks.tasks)
    finally:
        await tasks.stop()
        await listener.aclose()
        await redis.aclose()
        await pool.close()
