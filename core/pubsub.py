"""Pub/sub subscriptions that survive Redis restarts: resubscribe with backoff, never die on a bad message.

A relay hears every job (a pattern subscription); an API replica follows the channels of the jobs its own clients
watch (`Following`), since ignoring a message costs it about as much as reading one.

Messages are read as bytes and handed on as bytes: what other programs publish is decoded by the handler,
where bytes that are not UTF-8 are one bad message (a dead letter), not an error inside redis-py that would
end the subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.redis import CONNECT_TIMEOUT, TRANSIENT, redis_client
from core.retry import retrying
from core.supervise import TaskHealth

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes, bytes], Awaitable[None]]
Resubscribed = Callable[[], Awaitable[None]]
IDLE_WAKE_SECONDS = 1.0
CONFIRM_SECONDS = 2.0  # how long `follow` waits for Redis to confirm a subscription before carrying on
# How long a SUBSCRIBE may go unconfirmed, with nothing else arriving, before its connection is taken for dead.
# Well past CONFIRM_SECONDS: a Redis busy for seconds (a long script) is slow, not gone.
GIVE_UP_SECONDS = 10.0
# A connection that has carried nothing for PROBE_SECONDS is asked for a PONG. redis-py's own health check PINGs too,
# but never minds whether the answer comes: a frozen host or a lost NAT entry (no reset, ever) would leave us
# listening to nothing for as long as TCP keeps retrying (~15 minutes), every message meanwhile lost. One that has not
# answered the PING PONG_SECONDS later is given up and replaced.
PROBE_SECONDS = 5.0
PONG_SECONDS = 5.0


class Quiet:
    """How long a pub/sub connection has carried nothing: when to ask it for a PONG, and when to give it up."""

    def __init__(self, probe_seconds: float = PROBE_SECONDS, pong_seconds: float = PONG_SECONDS):
        self.probe_seconds, self.pong_seconds = probe_seconds, pong_seconds
        self.heard()

    def heard(self) -> None:
        self.since: float = time.monotonic()
        self.probed_at: float | None = None

    def probe_now(self) -> bool:
        """True once per quiet spell, when it is time to PING; raises once that PING has gone unanswered."""
        now = time.monotonic()
        if self.probed_at is not None:
            if now - self.probed_at > self.pong_seconds:
                raise RedisConnectionError(f"no answer to a PING on the pub/sub connection in {self.pong_seconds:g} s")
            return False
        if now - self.since > self.probe_seconds:
            self.probed_at = now
            return True
        return False


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
    client = redis_client(redis_url, raw=True, pool_size=2, reply_seconds=None)  # each read passes its own wait
    pubsub = client.pubsub()
    quiet = Quiet()
    try:
        await pubsub.psubscribe(*patterns)
        while True:
            # A bounded wait, not listen(): a message is handled as it arrives, and a stop is seen within a second.
            message = await pubsub.get_message(timeout=IDLE_WAKE_SECONDS)
            if message is None:
                if quiet.probe_now():
                    async with asyncio.timeout(CONFIRM_SECONDS):  # its answer, a `pong`, is read as a message
                        await pubsub.ping()
                continue
            quiet.heard()
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


class Following:
    """Channels followed on one connection as listeners come and go; the connection survives Redis restarts.

    `follow` returns once Redis has confirmed every channel asked for, so a state read after it misses nothing
    published since; without a connection (Redis unreachable) it returns at once, and after `confirm_seconds` when
    no confirmation comes. `on_subscribed` (the catch-up) runs once a new connection has subscribed everything
    followed. Channels no longer followed are unsubscribed when the listener next wakes; their messages until then
    are the handler's to ignore.

    The listener alone reads the connection; `follow` only writes to it. The listener alone reconnects (redis-py
    may not: see `core.redis.ConnectOnce`). It gives up a connection on which a SUBSCRIBE has gone unconfirmed for
    `give_up_seconds` while nothing arrives (one that died without a word); once one wait has run out, follows on
    that connection no longer wait, and the catch-up runs when Redis answers again.
    """

    def __init__(
        self,
        redis_url: str,
        on_message: MessageHandler,
        on_subscribed: Resubscribed | None = None,
        confirm_seconds: float = CONFIRM_SECONDS,
        give_up_seconds: float = GIVE_UP_SECONDS,
    ):
        self.redis_url, self.on_message, self.on_subscribed = redis_url, on_message, on_subscribed
        self.confirm_seconds, self.give_up_seconds = confirm_seconds, give_up_seconds
        self.confirmed: dict[str, asyncio.Future[None]] = {}  # each followed channel, done once Redis confirmed it
        self.dropped: set[str] = set()  # no longer followed, not yet unsubscribed
        self.connection: Connection | None = None  # the listener's, while it has one
        self.catch_up_when_confirmed = False  # set while a new connection's first SUBSCRIBE is unconfirmed
        self.unconfirmed = 0  # followed channels Redis has not confirmed yet
        self.asked_at: float | None = None  # since when a SUBSCRIBE on this connection has gone unconfirmed
        self.suspect = False  # a wait for a confirmation ran out: later follows on this connection do not wait

    async def follow(self, *channels: str) -> None:
        loop = asyncio.get_running_loop()
        channels = tuple(dict.fromkeys(channels))
        new = [channel for channel in channels if channel not in self.confirmed]
        for channel in new:
            self.confirmed[channel] = loop.create_future()
            self.unconfirmed += 1
            self.dropped.discard(channel)
        if self.connection is None:
            return  # the listener subscribes everything followed once it has a connection, then catches up
        if new and not await self._send("SUBSCRIBE", *new):
            return  # the listener replaces the connection, subscribes everything, then catches up
        waiting = [future for channel in channels if not (future := self.confirmed[channel]).done()]
        if waiting and not self.suspect:
            _, unconfirmed = await asyncio.wait(waiting, timeout=self.confirm_seconds)
            if unconfirmed:
                self.suspect = True
                log.warning("Redis has not confirmed %d subscription(s); carrying on", len(unconfirmed))

    def drop(self, *channels: str) -> None:
        for channel in channels:
            future = self.confirmed.pop(channel, None)
            if future is not None:
                self._settle(future)  # whoever still waits for it has left
                self.dropped.add(channel)

    async def run(self, health: TaskHealth | None = None) -> None:
        """Listen until cancelled: serving once every followed channel is subscribed, failing while reconnecting."""
        on_retry = health.failing if health else None
        async for attempt in retrying("pub/sub on followed channels", TRANSIENT, on_retry=on_retry):
            with attempt:
                await self._listen(health)

    async def _listen(self, health: TaskHealth | None) -> None:
        client = redis_client(self.redis_url, raw=True, pool_size=2, reconnect=False, reply_seconds=None)
        pubsub = client.pubsub()
        try:
            # Its reads have no socket timeout (each read passes its own): one that never answers must not hold us.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await pubsub.connect()
            connection = pubsub.connection
            assert connection is not None  # connect() opened it
            self.connection, self.dropped, self.asked_at, self.suspect = connection, set(), None, False
            # One SUBSCRIBE for all: Redis has subscribed every channel by the time the first confirmation arrives.
            self.catch_up_when_confirmed = bool(self.confirmed)
            if self.confirmed:
                await self._send("SUBSCRIBE", *self.confirmed)
            else:
                await _subscribed(health, self.on_subscribed)
            quiet = Quiet()
            while True:
                if not connection.is_connected:
                    raise RedisConnectionError("the pub/sub connection was lost")
                message = await pubsub.get_message(timeout=IDLE_WAKE_SECONDS)
                if message is None:
                    self._give_up_if_unconfirmed()
                    if quiet.probe_now():
                        await self._send("PING")  # its answer, a `pong`, is read as a message
                else:
                    quiet.heard()
                    await self._handle(message, health)
                if self.dropped:
                    dropped, self.dropped = self.dropped, set()
                    await self._send("UNSUBSCRIBE", *dropped)
        finally:
            self.connection = None
            await asyncio.shield(_close(pubsub, client))

    async def _send(self, *command: str) -> bool:
        """Write a command and never read (the listener reads every reply); whether it was written. Bounded: a
        write that fails or hangs closes the connection, and the listener replaces it."""
        if self.connection is None:
            return False
        if command[0] == "SUBSCRIBE" and self.asked_at is None:
            self.asked_at = time.monotonic()
        try:
            async with asyncio.timeout(self.confirm_seconds):
                await self.connection.send_command(*command, check_health=False)
        except TRANSIENT as exc:  # TimeoutError included
            log.warning("%s on the pub/sub connection failed (%s); it will be replaced", command[0], exc)
            return False
        return True

    def _give_up_if_unconfirmed(self) -> None:
        """Nothing arrived for a while, yet a SUBSCRIBE has long been unconfirmed: the connection is dead."""
        waiting = self.unconfirmed or self.catch_up_when_confirmed
        if waiting and self.asked_at is not None and time.monotonic() - self.asked_at > self.give_up_seconds:
            raise RedisConnectionError(f"Redis confirmed no subscription for {self.give_up_seconds:g} s")

    def _settle(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)
            self.unconfirmed -= 1

    async def _handle(self, message: dict, health: TaskHealth | None) -> None:
        if message["type"] == "message":
            try:
                await self.on_message(message["channel"], message["data"])
            except Exception:
                log.exception("handling a message on %r failed", message["channel"])
        elif message["type"] == "subscribe":
            future = self.confirmed.get(message["channel"].decode())
            if future is not None:
                self._settle(future)
            # Redis answers: time any wait still open from now, and let follows wait for their confirmations again.
            self.asked_at = time.monotonic() if self.unconfirmed else None
            # Follows that did not wait meanwhile may have read their job's state before Redis took their SUBSCRIBE:
            # the catch-up covers them, as it covers a new connection.
            catch_up, self.catch_up_when_confirmed = self.catch_up_when_confirmed or self.suspect, False
            self.suspect = False
            if catch_up:
                await _subscribed(health, self.on_subscribed)


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
