"""`spinbot relay`: the handback relay and the pub/sub listener in one process (run as many as you like)."""

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
from handoff.listener import EventListener
from handoff.relay import HandbackRelay


async def run_relay(
    settings: Settings, client: Client, consumer: str | None = None, ready: asyncio.Event | None = None
) -> None:
    spec = contracts()
    # Blocking stream reads need a socket timeout longer than their BLOCK.
    redis = redis_client(settings.redis_url, block_ms=spec.bridge.block_ms)
    pool = await connect_pool(settings.database_url)
    consumer = consumer or f"relay-{socket.gethostname()}-{os.getpid()}"
    relay = HandbackRelay(redis, client, spec.bridge, consumer)
    listener = EventListener(redis, Store(pool), client, spec.bridge)
    try:
        await asyncio.gather(
            relay.run(),
            subscribe_forever(settings.redis_url, spec.bridge.channel_patterns, listener.on_message, ready),
        )
    finally:
        await redis.aclose()
        await pool.close()
