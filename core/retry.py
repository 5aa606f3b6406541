"""The one backoff policy: tenacity for our own loops, redis-py's `Retry` inside Redis clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
)
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY, MAX_DELAY = 0.1, 5.0
HEALTHY_SPELL = 30.0  # a loop that ran this long between failures starts its backoff afresh


class ResettingBackoff(wait_base):
    """Exponential backoff that starts again from FIRST_DELAY after a healthy spell.

    A loop that serves for hours and then loses its server must reconnect fast, not at the
    delay its last outage reached.
    """

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY):
        self.first, self.cap = first, cap
        self.delay = 0.0
        self.last_failure = float("-inf")

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.next_delay()

    def next_delay(self) -> float:
        now = time.monotonic()
        healthy = now - self.last_failure > self.delay + HEALTHY_SPELL
        self.delay = self.first if healthy else min(self.delay * 2, self.cap)
        self.last_failure = now
        return self.delay


def _log_retry(what: str, on_retry: Callable[[BaseException], None] | None) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(error).__name__, error, delay)
        if on_retry is not None and error is not None:
            on_retry(error)

    return before_sleep


def retrying(
    what: str,
    errors: tuple[type[BaseException], ...],
    timeout: float | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
) -> AsyncRetrying:
    """Retry on `errors` with backoff, for ever or until `timeout` seconds have passed (then re-raise).

    `on_retry` hears of each failure before its wait (a task reporting itself down, say)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=ResettingBackoff(),
        stop=stop_after_delay(timeout) if timeout is not None else stop_never,
        before_sleep=_log_retry(what, on_retry),
        reraise=True,
    )


async def call_with_retry(
    what: str, errors: tuple[type[BaseException], ...], fn: Callable[[], Awaitable[T]], timeout: float | None = None
) -> T:
    """`await fn()`, retried on `errors` (see `retrying`). `fn` may return any awaitable."""
    async for attempt in retrying(what, errors, timeout):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def redis_retry(retries: int = 10) -> Retry:
    """Command-level retry for redis-py clients: a restarted server costs a short wait, not an error.

    Equal jitter keeps half of each backoff, so the retries always span at least ~3.7 s (at most ~7.5 s):
    a Redis restart within that is invisible to the caller. Only lost or refused connections are retried: a command
    that timed out waiting for its reply fails at once, or a server that stops answering would hold it ten times."""
    return Retry(EqualJitterBackoff(cap=1.0, base=0.05), retries, supported_errors=(RedisConnectionError,))
