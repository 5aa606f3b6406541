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


async def hears_again_after_silence(redis_url: str, redis_client, listen, ready=None) -> TaskHealth:
    """Run `listen(url, on_message, health)` through a proxy; once it hears, silence its connection, and require it
    to hear again. `ready(listener)` runs once it serves, before anything is published. Returns its health."""
    heard: list[bytes] = []

    async def on_message(channel: bytes, data: bytes) -> None:
        heard.append(data)

    health = TaskHealth("listener")
    async with proxied(redis_url) as (proxy, through_proxy):
        listener = listen(through_proxy, on_message)
        listening = asyncio.create_task(listener.run(health))
        try:
            await asyncio.wait_for(health.is_up.wait(), 10)
            if ready:
                await ready(listener)
            await redis_client.publish(CHANNEL, "before")
            await wait_for(lambda: b"before" in heard, what="the listener to hear what is published")
            proxy.go_silent()
            await heard_again(redis_client, heard, health)
            assert health.report()["state"] == "serving"  # its new connection subscribed again
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
    return health


class RelaySubscription:
    """The relay's pattern subscription, as `spinbot relay` runs it (core.pubsub.subscribe_forever)."""

    def __init__(self, redis_url: str, on_message):
        self.redis_url, self.on_message = redis_url, on_message

    async def run(self, health: TaskHealth) -> None:
        await subscribe_forever(self.redis_url, ["silence-test:*"], self.on_message, health)


async def test_the_relays_subscription_replaces_a_silent_connection(redis_url, redis_client):
    health = await hears_again_after_silence(redis_url, redis_client, RelaySubscription)
    assert health.report()["restarts"] == 0  # its connection was replaced, the task itself kept running


async def test_an_api_replicas_followed_channels_replace_a_silent_connection(redis_url, redis_client):
    async def follow(channels: Following) -> None:
        await channels.follow(CHANNEL)

    await hears_again_after_silence(redis_url, redis_client, Following, follow)
