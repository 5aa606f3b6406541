"""A pub/sub connection that goes silent without a reset (a frozen host, a failover that leaves the old connection
black-holed, a lost NAT entry) is noticed and replaced: the relay's pattern subscription and an API replica's
followed channels hear again within seconds. Before, redis-py's health check PINGed without minding the answer, and
the listener heard nothing until TCP gave up (~15 minutes), its health `serving` throughout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import pytest

from core.pubsub import PONG_SECONDS, PROBE_SECONDS, Following, subscribe_forever
from core.supervise import TaskHealth
from tests.e2e import wait_for
from tests.holding_proxy import HoldingProxy

pytestmark = pytest.mark.timeout(90)

CHANNEL = "silence-test:job"
HEARD_AGAIN_WITHIN = PROBE_SECONDS + PONG_SECONDS + 10  # its PING, the answer's wait, a reconnect, some slack


async def heard_again(redis_client, heard: list[bytes], health: TaskHealth) -> float:
    """Publish until the listener hears it; seconds it took. Fails if it did not within HEARD_AGAIN_WITHIN."""
    started = time.monotonic()
    while not any(data.startswith(b"after") for data in heard):
        waited = time.monotonic() - started
        assert waited < HEARD_AGAIN_WITHIN, f"nothing heard {waited:.0f} s after the silence; {health.report()}"
        await redis_client.publish(CHANNEL, f"after-{waited:.1f}")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def proxied(redis_url: str):
    url = urlsplit(redis_url)
    async with HoldingProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        yield proxy, f"redis://{proxy.address}{url.path or '/0'}"


async def test_the_relays_subscription_replaces_a_silent_connection(redis_url, redis_client):
    heard: list[bytes] = []

    async def on_message(channel: bytes, data: bytes) -> None:
        heard.append(data)

    health = TaskHealth("event-listener")
    async with proxied(redis_url) as (proxy, through_proxy):
        listening = asyncio.create_task(subscribe_forever(through_proxy, ["silence-test:*"], on_message, health))
        try:
            await asyncio.wait_for(health.is_up.wait(), 10)
            await redis_client.publish(CHANNEL, "before")
            await wait_for(lambda: b"before" in heard, what="the listener to hear what is published")
            proxy.go_silent()
            await heard_again(redis_client, heard, health)
            assert health.report()["restarts"] == 0 and health.report()["state"] == "serving"
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


async def test_an_api_replicas_followed_channels_replace_a_silent_connection(redis_url, redis_client):
    heard: list[bytes] = []

    async def on_message(channel: bytes, data: bytes) -> None:
        heard.append(data)

    health = TaskHealth("following")
    async with proxied(redis_url) as (proxy, through_proxy):
        channels = Following(through_proxy, on_message)
        listening = asyncio.create_task(channels.run(health))
        try:
            await asyncio.wait_for(health.is_up.wait(), 10)
            await channels.follow(CHANNEL)
            await redis_client.publish(CHANNEL, "before")
            await wait_for(lambda: b"before" in heard, what="the listener to hear what is published")
            proxy.go_silent()
            await heard_again(redis_client, heard, health)
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
