"""`spinbot relay`: the handback relay and the pub/sub listener in one process (run as many as you like)."""
from __future__ import annotations

import asyncio
import os
import socket

import redis.asyncio as aioredis
from temporalio.client import Client

from handoff.listener import EventListener
from handoff.pubsub import subscribe_forever
from handoff.relay import HandbackRelay
from spinbot.contracts import contracts
from spinbot.settings import Settings
from spinbot.store import Store, connect_pool


async def run_relay(settings: Settings, client: Client, consumer: str | None = None,
                    ready: asyncio.Event | None = None) -> None:
    spec = contracts()
    # Blocking stream reads need a socket timeout longer than their BLOCK.
    redis = aioredis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30,
                              socket_timeout=spec.bridge.block_ms / 1000 + 5)
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
