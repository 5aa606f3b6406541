"""Redis clients as every role opens them: command retries, pools that wait, health checks, bytes on request."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from core.retry import redis_retry

Entry = dict[FieldT, EncodableT]  # the fields of a stream entry, as redis-py's XADD takes them

# What a restart or a network blip looks like from a client: retry these, never drop work for them.
# (BusyLoadingError, a server still loading its data after a restart, and MaxConnectionsError are ConnectionErrors.)
TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
REDIS_PY_SOCKET_TIMEOUT = 5.0  # what redis-py (8.x) uses when the client is built without one
# How long a command waits for its reply. A Redis that stops answering but keeps its connections (a frozen host, a
# partition that sends no reset) fails the command after this, once, instead of holding it (and its request) for ever.
REPLY_SECONDS = 5.0

# One pool per client. Commands are short (blocking reads and pub/sub have connections of their own), so a few
# dozen connections serve thousands of requests and sockets; past that a command waits for a free one rather
# than failing, and only gives up (a ConnectionError) after POOL_WAIT seconds.
POOL_SIZE = 64
POOL_WAIT = 10.0
CONNECT_TIMEOUT = 5.0
HEALTH_CHECK_SECONDS = 10  # an idle connection is PINGed before use after this long, so a dead one is replaced
# How a connection names itself to the server (CLIENT SETINFO), made once. Given none, redis-py builds one for every
# connection it opens and reads its own version from the installed packages' metadata each time: ~1 ms of CPU, and
# a tenth of the API's time while 1,000 WebSocket clients subscribing at once filled its pool.
DRIVER_INFO = DriverInfo()


def redis_client(
    url: str,
    block_ms: int | None = None,
    *,
    raw: bool = False,
    pool_size: int = POOL_SIZE,
    reconnect: bool = True,
    reply_seconds: float | None = REPLY_SECONDS,
) -> aioredis.Redis:
    """A client for `url`; its commands wait `reply_seconds` for a reply, and with `block_ms` that much longer (as
    its socket timeout), so that blocking reads of that length are not cut off.

    `raw` keeps replies as bytes: for consumers of what other programs wrote, which decode it themselves.
    Without `reconnect`, a command is never retried and a lost connection is never opened again: every use of it
    raises instead. For a pub/sub listener that reconnects and subscribes again itself, and must know when.
    `reply_seconds=None`: no socket timeout, for pub/sub listeners, whose every read passes its own.
    """
    socket_timeout = block_ms / 1000 + REPLY_SECONDS if block_ms else None
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=POOL_WAIT,
        decode_responses=not raw,
        health_check_interval=HEALTH_CHECK_SECONDS,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        **({} if url.startswith("unix:") else {"socket_keepalive": True}),  # a unix socket's connection takes none
        driver_info=DRIVER_INFO,
        retry=redis_retry() if reconnect else Retry(NoBackoff(), 0, supported_errors=()),
        retry_on_error=[RedisConnectionError] if reconnect else [],  # a timeout is not retried: see redis_retry
    )
    kind = pool.connection_class  # by the URL's scheme: TCP, TLS or a unix socket
    ours = (KeepsCancels, RepliesInTime) if reconnect else (KeepsCancels, RepliesInTime, ConnectOnce)
    reply_timeout = None if block_ms else reply_seconds  # a blocking-read client's socket timeout covers its replies
    pool.connection_class = type(f"Our{kind.__name__}", (*ours, kind), {"reply_timeout": reply_timeout})
    return aioredis.Redis.from_pool(pool)


class KeepsCancels:
    """A connection (mixed into redis-py's) whose sends never lose a cancel.

    With a socket timeout, redis-py sends each command under asyncio.wait_for, and on Python 3.11 wait_for returns
    the send's result when a cancel lands as the send completes: the task runs on as if never asked to stop, and a
    loop that next waits for anything but Redis waits for ever. Such a send raises CancelledError here instead, and
    closes the connection first: its reply, unread, would otherwise answer the next command that borrows it."""

    async def send_packed_command(self, *args, **kwargs) -> None:
        task = asyncio.current_task()
        asked = task.cancelling() if task else 0
        await super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        if task is not None and task.cancelling() > asked:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise asyncio.CancelledError


class RepliesInTime:
    """A connection (mixed into redis-py's) whose replies are awaited `reply_timeout` seconds at most.

    The same bound as a socket timeout, without its cost: with one, redis-py also sends every command under
    asyncio.wait_for, a task per send (~50 µs of CPU per command, against ~130 µs for a whole GET). A send only
    waits when the socket's buffer is full, and the reply that follows it is bounded here."""

    reply_timeout: float | None = None

    async def read_response(self, *args, timeout: float | None = None, **kwargs):
        if timeout is not None or self.reply_timeout is None:  # an explicit wait (pub/sub's) is the caller's
            return await super().read_response(*args, timeout=timeout, **kwargs)  # type: ignore[misc]
        try:
            async with asyncio.timeout(self.reply_timeout):
                return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]  # its reply would answer the next
            raise RedisTimeoutError(f"no reply from Redis within {self.reply_timeout} s") from None


class ConnectOnce:
    """A connection (mixed into redis-py's) that raises where it would connect again once it has been lost.

    redis-py reconnects a lost connection wherever it is next used, and a pub/sub connection then subscribes again
    to what redis-py recorded, unseen by its user."""

    _connected_once = False

    async def connect_check_health(self, *args, **kwargs) -> None:
        if self.is_connected:  # type: ignore[attr-defined]
            return
        if self._connected_once:
            raise RedisConnectionError("connection lost (its user opens a new one)")
        await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        self._connected_once = True


def bytes_twin(client: aioredis.Redis) -> aioredis.Redis:
    """A client of the same server with the same options and pool kind, whose replies stay bytes.

    Stream consumers read through one: bytes that are not UTF-8 then reach our own decoding (a contract
    error for that one entry) instead of raising inside redis-py, which would lose the whole reply.
    """
    pool = client.connection_pool
    options = {**pool.connection_kwargs, "decode_responses": False}
    size, kind = pool.max_connections, pool.connection_class
    twin: aioredis.ConnectionPool
    if isinstance(pool, aioredis.BlockingConnectionPool):
        twin = aioredis.BlockingConnectionPool(size, pool.timeout, kind, **options)
    else:
        twin = aioredis.ConnectionPool(kind, size, **options)
    return aioredis.Redis.from_pool(twin)


def raise_if_cancelled() -> None:
    """Re-raise a cancel that a client not built here lost (see KeepsCancels): the data-plane loops take any redis-py
    client, and call this after each read, so a stop is honoured within one read even then."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def blocking_read_ms(redis: aioredis.Redis, block_ms: int) -> int:
    """BLOCK for XREADGROUP, kept under the client's socket timeout: a read cut off by that timeout loses
    its reply, and the entries it delivered would stay pending for good."""
    socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout", REDIS_PY_SOCKET_TIMEOUT)
    if not socket_timeout:
        return block_ms
    return max(100, min(block_ms, int(socket_timeout * 1000) - 1000))
