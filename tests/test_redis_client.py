"""Redis clients as every role opens them (core/redis.py), against the real server."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time

import pytest
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.driver_info import DriverInfo

from core.redis import DRIVER_INFO, ConnectOnce, bytes_twin, redis_client
from spinbot.services import redis_server_binary


async def test_every_connection_shares_one_driver_info(redis_url):
    """redis-py otherwise builds a DriverInfo for each connection it opens, reading its own version from the installed
    packages' metadata each time (~1 ms of CPU a connection)."""
    client = redis_client(redis_url, pool_size=4)
    twin = bytes_twin(client)
    opened = []
    try:
        for pool in (client.connection_pool, twin.connection_pool):
            opened += [(pool, await pool.get_connection()) for _ in range(3)]
        assert await client.ping() and await twin.ping()
        assert isinstance(DRIVER_INFO, DriverInfo)
        assert all(connection.driver_info is DRIVER_INFO for _, connection in opened)
    finally:
        for pool, connection in opened:
            await pool.release(connection)
        await twin.aclose()
        await client.aclose()


@pytest.fixture
def unix_redis(tmp_path):
    """A Redis listening on a unix socket only; its path."""
    socket = tmp_path / "redis.sock"
    command = [redis_server_binary(), "--port", "0", "--unixsocket", str(socket), "--save", "", "--dir", str(tmp_path)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield socket
    finally:
        server.terminate()
        server.wait(10)


async def test_a_unix_socket_url_works_for_commands_and_for_a_listener_that_reconnects_itself(unix_redis):
    """`unix://` URLs failed in every client (redis-py's unix connection takes no `socket_keepalive`: a TypeError
    that no retry catches). A client that must not reconnect by itself gets the same connection kind, once."""
    for reconnect in (True, False):
        client = redis_client(f"unix://{unix_redis}", reconnect=reconnect)
        try:
            assert await client.set("k", "v") and await client.get("k") == "v"
            kind = client.connection_pool.connection_class
            assert issubclass(kind, UnixDomainSocketConnection)
            assert issubclass(kind, ConnectOnce) is not reconnect
        finally:
            await client.aclose()


@pytest.mark.parametrize("block_ms", [None, 2000])
async def test_a_task_cancelled_while_it_sends_a_command_stops(redis_url, block_ms):
    """redis-py sends each command under asyncio.wait_for, which on Python 3.11 returns the send's result when a
    cancel lands as the send completes: the cancel was lost, and a loop that then waited for anything but Redis
    (the relay's event recorder, waiting for more to write) ran on after its stop, for ever."""
    client = redis_client(redis_url, block_ms)  # with block_ms, a socket timeout: the send runs under wait_for

    async def commands_for_ever():
        while True:
            pipe = client.pipeline(transaction=False)
            pipe.set("cancel-probe", 1)
            pipe.expire("cancel-probe", 10)
            await pipe.execute()
            await client.get("cancel-probe")

    ran_on = 0
    try:
        for _ in range(100):
            task = asyncio.create_task(commands_for_ever())
            await asyncio.sleep(random.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=1)
            if not done:
                ran_on += 1
                task.cancel()  # the loop above sends again soon: this cancel lands elsewhere
                await asyncio.wait([task], timeout=1)
        assert ran_on == 0, f"{ran_on} of 100 cancelled tasks ran on"
        assert await client.get("cancel-probe") == "1", "the connections returned to the pool still answer in turn"
    finally:
        await client.aclose()
