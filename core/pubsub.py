"""A pattern subscription that survives Redis restarts: resubscribes with backoff, never dies on a bad message.

Messages are read as bytes and handed on as bytes: what other programs publish is decoded by the handler,
where bytes that are not UTF-8 are one bad message (a dead letter), not an error inside redis-py that would
end the subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.redis import TRANSIENT, raise_if_cancelled, redis_client
from core.retry import retrying
from core.supervise import TaskHealth

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes, bytes], Awaitable[None]]
Resubscribed = Callable[[], Awaitable[None]]
IDLE_WAKE_SECONDS = 1.0


async def subscribe_forever(
    redis_url: str,
    patterns: list[str],
    on_message: MessageHandler,
    health: TaskHealth | None = None,
    on_subscribed: Resubscribed | None = None,
) -> None:
    """PSUBSCRIBE on a connection of its own and pass each (channel, data) to `on_message`, as bytes.

    `health` is serving once every pattern is confirmed (again after each reconnect), and failing while a
    lost connection is retried; `on_subscribed` then runs, to catch up on what was published meanwhile.
    """
    on_retry = health.failing if health else None
    async for attempt in retrying(f"pub/sub on {', '.join(patterns)}", TRANSIENT, on_retry=on_retry):
        with attempt:
            await _listen(redis_url, patterns, on_message, health, on_subscribed)


async def _listen(
    redis_url: str,
    patterns: list[str],
    on_message: MessageHandler,
    health: TaskHealth | None,
    on_subscribed: Resubscribed | None,
) -> None:
    client = redis_client(redis_url, raw=True, pool_size=2)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(*patterns)
        while True:
            # A bounded wait, not listen(): a message is handled as it arrives, and a stop is seen within a second.
            message = await pubsub.get_message(timeout=IDLE_WAKE_SECONDS)
            raise_if_cancelled()
            if message is None:
                continue
            if message["type"] == "psubscribe":
                # redis-py resubscribes by itself after a reconnect; each time, the last confirmation counts all.
                if message["data"] == len(patterns):
                    await _subscribed(health, on_subscribed)
            elif message["type"] == "pmessage":
                try:
                    await on_message(message["channel"], message["data"])
                except Exception:
                    log.exception("handling a message on %r failed", message["channel"])
    finally:
        await asyncio.shield(_close(pubsub, client))


async def _subscribed(health: TaskHealth | None, on_subscribed: Resubscribed | None) -> None:
    if health:
        health.serving()
    if on_subscribed:
        try:
            await on_subscribed()
        except Exception:
            log.exception("catching up after subscribing failed")


async def _close(pubsub: PubSub, client: aioredis.Redis) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except (RuntimeError, RedisError, OSError):
        pass  # the loop is shutting down or the server is gone: nothing left to close cleanly
