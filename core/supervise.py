"""Background tasks that never die silently: each is restarted with backoff, logged, and reports its state.

A task is a coroutine function taking its `TaskHealth`; it calls `serving()` once it does its work (subscribed,
reading its stream) and `failing(error)` while it retries a lost connection. A task that raises, or returns, is
logged with the reason and started again after a backoff that resets after a healthy spell (core/retry.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from core.metrics import TASK_RESTARTS, TASK_UP
from core.retry import ResettingBackoff

log = logging.getLogger(__name__)


@dataclass
class TaskHealth:
    """What one supervised task says about itself, for readiness checks and the `spinbot_task_up` gauge."""

    name: str
    up: bool = False
    state: str = "starting"
    restarts: int = 0
    changed: float = field(default_factory=time.monotonic)
    is_up: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def serving(self) -> None:
        self._set(True, "serving")

    def failing(self, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._set(False, reason[:300])

    def _set(self, up: bool, state: str) -> None:
        if (self.up, self.state) != (up, state):
            self.up, self.state, self.changed = up, state, time.monotonic()
        if up:
            self.is_up.set()
        else:
            self.is_up.clear()
        TASK_UP.labels(task=self.name).set(1 if up else 0)

    def report(self) -> dict:
        return {
            "ok": self.up,
            "state": self.state,
            "restarts": self.restarts,
            "forSeconds": round(time.monotonic() - self.changed, 1),
        }


TaskRun = Callable[[TaskHealth], Awaitable[None]]


class Supervisor:
    """Runs named tasks until stopped; one that dies is logged and restarted with backoff."""

    def __init__(self) -> None:
        self.health: dict[str, TaskHealth] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, run: TaskRun) -> TaskHealth:
        health = self.health[name] = TaskHealth(name)
        health.failing("starting")
        self.tasks.append(asyncio.create_task(self._keep_running(health, run), name=f"supervised:{name}"))
        return health

    async def _keep_running(self, health: TaskHealth, run: TaskRun) -> None:
        backoff = ResettingBackoff()
        while True:
            try:
                await run(health)
                reason: BaseException | str = "returned"
                log.error("background task %s returned; it should run until stopped", health.name)
            except Exception as exc:
                reason = exc
                log.exception("background task %s died", health.name)
            delay = backoff.next_delay()
            health.failing(reason)
            health.restarts += 1
            TASK_RESTARTS.labels(task=health.name).inc()
            log.warning("restarting background task %s in %.1fs (restart %d)", health.name, delay, health.restarts)
            await asyncio.sleep(delay)

    @property
    def all_up(self) -> bool:
        return all(health.up for health in self.health.values())

    async def wait_up(self, timeout: float) -> None:
        """Until every task serves (start-up); TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(health.is_up.wait() for health in self.health.values()))

    def report(self) -> dict[str, dict]:
        return {name: health.report() for name, health in self.health.items()}

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for health in self.health.values():
            health.failing("stopped")
