"""A pattern subscription that survives Redis restarts: resubscribes with backoff, never dies on a bad message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.redis import TRANSIENT, raise_if_cancelled
from core.retry import retrying

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, str], Awaitable[None]]
IDLE_WAKE_SECONDS = 1.0


async def subscribe_forever(
    redis_url: str, patterns: list[str], on_message: MessageHandler, ready: asyncio.Event | None = None
) -> None:
    """PSUBSCRIBE on a connection of its own and pass each (channel, data) to `on_message`."""
    async for attempt in retrying(f"pub/sub on {', '.join(patterns)}", TRANSIENT):
        with attempt:
            await _listen(redis_url, patterns, on_message, ready)


async def _listen(redis_url: str, patterns: list[str], on_message: MessageHandler, ready: asyncio.Event | None) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True, health_check_interval=30)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.psubscribe(*patterns)
        if ready:
            ready.set()
        while True:
            # A bounded wait, not listen(): a message is handled as it arrives, and a stop is seen within a second.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=IDLE_WAKE_SECONDS)
            raise_if_cancelled()
            if message is None or message["type"] != "pmessage":
                continue
            try:
                await on_message(message["channel"], message["data"])
            except Exception:
                log.exception("handling a message on %s failed", message["channel"])
    finally:
        await asyncio.shield(_close(pubsub, client))


async def _close(pubsub: PubSub, client: aioredis.Redis) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except (RuntimeError, RedisError, OSError):
        pass  # the loop is shutting down or the server is gone: nothing left to close cleanly
