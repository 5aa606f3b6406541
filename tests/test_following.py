"""An API replica hears only the jobs its clients follow: one subscription per followed job's channel, confirmed
before the job's state is read, dropped when its last watcher leaves, and kept through Redis dropping the
connection. Before, every replica pattern-subscribed to every job and read (then ignored) every message."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from core.pubsub import CONFIRM_SECONDS, Following
from core.supervise import TaskHealth
from spinbot.ports import free_port
from tests.e2e import BRIDGE, wait_for
from tests.ws_clients import ws_client, ws_clients

pytestmark = pytest.mark.timeout(60)


async def subscribers(redis, job_id: str) -> tuple[int, int]:
    """How many connections subscribe to the job's status and progress channels (pattern subscriptions aside)."""
    counts = dict(await redis.pubsub_numsub(BRIDGE.channel("status", job_id), BRIDGE.channel("progress", job_id)))
    return counts[BRIDGE.channel("status", job_id)], counts[BRIDGE.channel("progress", job_id)]


async def test_the_api_subscribes_to_a_job_while_its_clients_follow_it_and_once_for_all_of_them(stack, redis_client):
    job_id = str(uuid.uuid4())
    assert await subscribers(redis_client, job_id) == (0, 0)
    async with ws_clients(stack.api_url, 3) as clients:
        for client in clients:
            await client.subscribe(job_id)
        assert await subscribers(redis_client, job_id) == (1, 1)  # one replica, one subscription per channel
        await clients[0].send({"action": "unsubscribe", "jobId": job_id})
        await clients[0].recv_about(job_id)
    # The last watcher gone (the others simply disconnected), the listener unsubscribes at its next wake.
    await wait_for(lambda: _gone(redis_client, job_id), 10, "the API to unsubscribe from a job nobody follows")


async def _gone(redis, job_id: str) -> bool:
    return await subscribers(redis, job_id) == (0, 0)


async def test_a_client_following_hundreds_of_unknown_jobs_leaves_no_subscription_behind(stack, redis_client):
    unknown = [f"no-such-job-{i}" for i in range(300)]
    async with ws_client(stack.api_url) as client:
        for job_id in unknown:
            assert (await client.subscribe(job_id))["status"] == "not_found"
        assert await subscribers(redis_client, unknown[-1]) == (1, 1)
    for job_id in (unknown[0], unknown[150], unknown[-1]):
        await wait_for(lambda job_id=job_id: _gone(redis_client, job_id), 10, f"no subscription left for {job_id}")


@contextlib.asynccontextmanager
async def following(redis_url: str, **options):
    """A Following whose listener runs; yields (following, messages heard, health, catch-ups counted)."""
    heard: list[tuple[bytes, bytes]] = []
    catch_ups: list[int] = []

    async def on_message(channel: bytes, data: bytes) -> None:
        heard.append((channel, data))

    async def on_subscribed() -> None:
        catch_ups.append(len(heard))

    channels = Following(redis_url, on_message, on_subscribed, **options)
    health = TaskHealth("following")
    listener = asyncio.create_task(channels.run(health))
    try:
        await asyncio.wait_for(health.is_up.wait(), 10)
        yield channels, heard, health, catch_ups
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_what_is_published_once_follow_returns_is_heard(redis_url, redis_client):
    """`follow` returns only once Redis has confirmed the subscription: a message published on another connection
    right after it (the state read the API does next) is never missed, in many tries."""
    async with following(redis_url) as (channels, heard, _, _):
        names = [f"test:following:{uuid.uuid4()}" for _ in range(50)]
        for name in names:
            await channels.follow(name)
            assert await redis_client.publish(name, "hello") == 1
        await wait_for(lambda: len(heard) == len(names), 5, "every message heard")
        assert [channel.decode() for channel, _ in heard] == names


async def test_a_channel_dropped_and_followed_again_before_the_listener_wakes_stays_subscribed(redis_url, redis_client):
    async with following(redis_url) as (channels, heard, _, _):
        name = f"test:following:{uuid.uuid4()}"
        await channels.follow(name)
        channels.drop(name)
        await channels.follow(name)
        await asyncio.sleep(1.5)  # past the listener's idle wake, when it unsubscribes what was dropped
        assert (await redis_client.pubsub_numsub(name))[0][1] == 1
        assert await redis_client.publish(name, "still here") == 1
        await wait_for(lambda: heard == [(name.encode(), b"still here")], 5, "the message heard")


async def test_followed_channels_are_subscribed_again_after_redis_drops_the_connection(redis_url, redis_client):
    """The listener reconnects, subscribes every followed channel, and only then catches up (the hub's
    catch-up reads each followed job's state: read earlier, a change before the subscription would be lost)."""
    async with following(redis_url) as (channels, heard, health, catch_ups):
        names = [f"test:following:{uuid.uuid4()}" for _ in range(3)]
        await channels.follow(*names)
        assert catch_ups == [0]  # the first connection had nothing to subscribe
        for connection in await redis_client.client_list(_type="pubsub"):
            if connection["sub"] == "3":
                await redis_client.client_kill_filter(_id=connection["id"])
        await wait_for(lambda: len(catch_ups) == 2, 15, "a catch-up after subscribing again")
        assert health.up
        counts = dict(await redis_client.pubsub_numsub(*names))
        assert all(counts[name] == 1 for name in names), counts
        await redis_client.publish(names[1], "after")
        await wait_for(lambda: heard == [(names[1].encode(), b"after")], 5, "a message on the new connection")


async def test_follow_does_not_wait_while_redis_is_unreachable():
    """No connection: `follow` returns at once (a WebSocket subscribe then reads the state from PostgreSQL), and
    the channel is subscribed, then caught up on, once the listener connects."""
    heard: list = []

    async def on_message(channel: bytes, data: bytes) -> None:
        heard.append(data)

    channels = Following(f"redis://127.0.0.1:{free_port()}/0", on_message)
    listener = asyncio.create_task(channels.run(TaskHealth("following")))
    try:
        started = time.monotonic()
        await asyncio.wait_for(channels.follow("test:following:nowhere"), 5)
        assert time.monotonic() - started < CONFIRM_SECONDS / 2
        assert "test:following:nowhere" in channels.confirmed and not heard
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_follow_on_an_idle_connection_whose_health_check_is_due_only_writes(redis_url, redis_client):
    """redis-py's own subscribe() first health-checks an unsubscribed connection: a PING whose reply it reads, while
    the listener reads the same connection ("readuntil() called while another coroutine is already waiting"). The
    WebSocket subscribe that called it was closed with 1011, and the connection dropped for every followed job."""
    async with following(redis_url) as (channels, _, health, catch_ups):
        connection = channels.connection
        assert connection is not None
        connection.next_health_check = 0  # due now
        name = f"test:following:{uuid.uuid4()}"
        await channels.follow(name)
        assert (await redis_client.pubsub_numsub(name))[0][1] == 1
        assert channels.connection is connection and catch_ups == [0] and health.up  # no reconnect


async def test_a_connection_lost_while_the_listener_is_busy_is_replaced_and_caught_up_on(redis_url, redis_client):
    """The connection killed while the listener is inside a handler (the hub reads Redis there), and two jobs
    followed meanwhile: redis-py would reopen it unseen where it is next used, subscribed to what redis-py had
    recorded and without the catch-up. The listener replaces it, subscribes everything, then catches up."""
    slow_handler_entered = asyncio.Event()

    async def slow(channel: bytes, data: bytes) -> None:
        if data == b"slow":
            slow_handler_entered.set()
            await asyncio.sleep(1.0)

    async with following(redis_url) as (channels, heard, _, catch_ups):
        channels.on_message, recorded = slow, channels.on_message
        names = [f"test:following:{uuid.uuid4()}" for _ in range(3)]
        await channels.follow(names[0])
        await redis_client.publish(names[0], "slow")
        await asyncio.wait_for(slow_handler_entered.wait(), 5)
        for connection in await redis_client.client_list(_type="pubsub"):
            if connection["sub"] == "1":
                await redis_client.client_kill_filter(_id=connection["id"])
        await asyncio.gather(channels.follow(names[1]), channels.follow(names[2]))
        channels.on_message = recorded
        await wait_for(lambda: len(catch_ups) == 2, 15, "a catch-up on a new connection")
        counts = dict(await redis_client.pubsub_numsub(*names))
        assert all(counts[name] == 1 for name in names), counts
        for name in names:
            await redis_client.publish(name, "after")
        await wait_for(lambda: len(heard) == 3, 5, "a message on each followed channel")
        assert sorted(channel.decode() for channel, _ in heard) == sorted(names)


async def test_a_connection_on_which_redis_confirms_nothing_is_given_up(redis_url):
    """The path to Redis goes silent (no FIN, no reset): a SUBSCRIBE is never confirmed. The listener gives the
    connection up once nothing has arrived for `give_up_seconds`; meanwhile only the first follow waits."""
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    silent = asyncio.Event()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not silent.is_set():
                writer.write(data)
                await writer.drain()

    async def proxy(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", redis_port)
        await asyncio.gather(
            relay(client_reader, server_writer), relay(server_reader, client_writer), return_exceptions=True
        )

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"redis://127.0.0.1:{port}/0"
        async with following(url, confirm_seconds=0.3, give_up_seconds=0.5) as (channels, _, health, _):
            await channels.follow("test:following:before")
            lost = channels.connection
            silent.set()
            started = time.monotonic()
            await channels.follow("test:following:unanswered")
            assert 0.25 < time.monotonic() - started < 1.0  # waited `confirm_seconds`, no longer
            started = time.monotonic()
            await channels.follow("test:following:unanswered-too")
            assert time.monotonic() - started < 0.2  # the connection is suspect: no second wait
            await wait_for(lambda: not health.up, 5, "the listener to give the silent connection up")
            assert channels.connection is not lost
    finally:
        server.close()


BUSY_LUA = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


async def test_a_redis_busy_for_a_while_keeps_its_subscribers_connection(redis_url, redis_client):
    """Redis running a long script answers nobody: a follow made meanwhile waits `confirm_seconds` and carries on,
    but the connection is kept (giving it up would make every replica resubscribe at once). Once Redis answers
    again, the catch-up runs: that follow's state may have been read before Redis took its SUBSCRIBE."""
    async with following(redis_url, confirm_seconds=0.3, give_up_seconds=3.0) as (channels, heard, health, catch_ups):
        connection = channels.connection
        name = f"test:following:{uuid.uuid4()}"
        busy = asyncio.create_task(redis_client.eval(BUSY_LUA, 0, 1_500_000))
        await asyncio.sleep(0.1)
        await channels.follow(name, name)  # a channel named twice is followed once
        await busy
        await wait_for(lambda: channels.unconfirmed == 0, 5, "the confirmation once Redis answers again")
        await wait_for(lambda: len(catch_ups) == 2, 5, "a catch-up once Redis answers again")
        await asyncio.sleep(1.2)  # an idle read or two after it
        assert channels.connection is connection and health.up and len(catch_ups) == 2
        await redis_client.publish(name, "after")
        await wait_for(lambda: heard == [(name.encode(), b"after")], 5, "the message")
