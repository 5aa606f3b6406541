"""A pattern subscription that survives Redis restarts: resubscribes with backoff, never dies on a bad message."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import redis.asyncio as aioredis

from handoff.streams import TRANSIENT, raise_if_cancelled

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, str], Awaitable[None]]
IDLE_WAKE_SECONDS = 1.0


async def subscribe_forever(redis_url: str, patterns: list[str], on_message: MessageHandler,
                            ready: asyncio.Event | None = None) -> None:
    """PSUBSCRIBE on a connection of its own and pass each (channel, data) to `on_message`."""
    delay = 0.1
    while True:
        client = aioredis.from_url(redis_url, decode_responses=True)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(*patterns)
            if ready:
                ready.set()
            delay = 0.1
            while True:
                # A bounded wait (not listen()): a message is handled the moment it arrives, and a stop is seen within a second.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=IDLE_WAKE_SECONDS)
                raise_if_cancelled()
                if message is None or message["type"] != "pmessage":
                    continue
                try:
                    await on_message(message["channel"], message["data"])
                except Exception:
                    log.exception("handling a message on %s failed", message["channel"])
        except TRANSIENT as exc:
            log.warning("pub/sub connection lost (%s); resubscribing in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            await asyncio.shield(_close(pubsub, client))


async def _close(pubsub, client) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except (RuntimeError, *TRANSIENT):
        pass  # the loop is shutting down or the server is gone: nothing left to close cleanly
