"""Which dependency an error says is down (Redis, PostgreSQL, Temporal), so callers answer "unavailable", not "bug"."""

from __future__ import annotations

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from temporalio.service import RPCError, RPCStatusCode

REDIS = "Redis"
POSTGRES = "PostgreSQL"
TEMPORAL = "Temporal"

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the pool's connection went away
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, or not yet accepting connections
    asyncpg.TooManyConnectionsError,
    OSError,  # socket errors while connecting
    TimeoutError,
)
TEMPORAL_DOWN = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}

# A bare socket error or timeout does not name its peer; the client library it came out of does.
_LIBRARIES = {"redis": REDIS, "asyncpg": POSTGRES, "temporalio": TEMPORAL}


def down_dependency(exc: BaseException) -> str | None:
    """The dependency `exc` shows to be unreachable or overloaded, or None when it is no outage."""
    if isinstance(exc, REDIS_DOWN):
        return REDIS
    if isinstance(exc, RPCError):
        return TEMPORAL if exc.status in TEMPORAL_DOWN else None
    if isinstance(exc, (OSError, TimeoutError)):
        return _raised_in(exc)
    if isinstance(exc, POSTGRES_DOWN):
        return POSTGRES
    return None


def _raised_in(exc: BaseException) -> str | None:
    frames = exc.__traceback__
    found = None
    while frames is not None:
        library = _LIBRARIES.get(str(frames.tb_frame.f_globals.get("__name__", "")).split(".")[0])
        found = library or found  # the innermost library frame wins
        frames = frames.tb_next
    return found
