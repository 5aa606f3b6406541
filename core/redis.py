"""Redis clients as every role opens them: command retries, health checks, and the errors worth retrying."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from core.retry import redis_retry

Entry = dict[FieldT, EncodableT]  # the fields of a stream entry, as redis-py's XADD takes them

# What a restart or a network blip looks like from a client: retry these, never drop work for them.
TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
REDIS_PY_SOCKET_TIMEOUT = 5.0  # what redis-py (8.x) uses when the client is built without one


def redis_client(url: str, block_ms: int | None = None) -> aioredis.Redis:
    """A client for `url`; with `block_ms`, its socket timeout outlasts blocking reads of that length."""
    socket_timeout = block_ms / 1000 + 5 if block_ms else None
    return aioredis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=socket_timeout,
        retry=redis_retry(),
        retry_on_error=[RedisConnectionError],
    )


def raise_if_cancelled() -> None:
    """Re-raise a cancel that redis-py lost: it sends through asyncio.wait_for, which Python 3.11 lets swallow one.

    Every blocking Redis loop calls this after each read, and reads block for a bounded time, so a
    stop request is honoured within one read instead of leaving the task running forever.
    """
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
