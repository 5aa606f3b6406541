"""Keeps `spinbot dev`'s children running: a child that dies is restarted with backoff, on the same ports and data.

One lock per data folder (a second `spinbot dev` on it is refused), held for the supervisor's lifetime.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from spinbot.services import Child, ServiceError

FIRST_DELAY = 0.5  # seconds before the first restart; doubled on each crash in a row
MAX_DELAY = 30.0
STABLE_AFTER = 30.0  # a child that ran this long before dying starts again at FIRST_DELAY
LOCK_NAME = "spinbot-dev.lock"


class FolderInUse(ServiceError):
    """Another `spinbot dev` holds the data folder."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data folder's lock (kept while the returned file stays open); FolderInUse when held."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_NAME, "a+")  # not inherited by children (close-on-exec)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderInUse(
            f"another spinbot dev (pid {holder}) is using {data_dir}; stop it or choose --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass
class Supervised:
    """One child and how to start it again."""

    name: str
    start: Callable[[], Child]
    child: Child | None = None
    started_at: float = 0.0
    delay: float = FIRST_DELAY
    restart_at: float | None = None  # set while it is down
    restarts: int = 0


class Supervisor:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.units: list[Supervised] = []

    def start(self, name: str, start: Callable[[], Child]) -> Child:
        """Start a child now (errors propagate: a stack that cannot start is refused) and supervise it."""
        unit = Supervised(name, start)
        self.units.append(unit)
        self._launch(unit)
        assert unit.child is not None
        return unit.child

    def tick(self) -> None:
        """Notice children that died and restart those whose backoff has passed."""
        now = time.monotonic()
        for unit in self.units:
            child = unit.child
            if child is not None and child.proc.poll() is not None:
                self._died(unit, child.proc.returncode, now)
            if unit.restart_at is not None and now >= unit.restart_at:
                try:
                    self._launch(unit)
                except (ServiceError, OSError) as exc:
                    self._failed(unit, str(exc), time.monotonic())
                else:
                    unit.restarts += 1
                    pid = unit.child.proc.pid if unit.child else None
                    self.say(f"{unit.name} restarted (pid {pid}, restart {unit.restarts})")

    def stop_all(self) -> None:
        for unit in reversed(self.units):
            unit.restart_at = None
            if unit.child is not None:
                unit.child.stop()

    def _launch(self, unit: Supervised) -> None:
        unit.restart_at = None
        unit.child = None
        unit.child = unit.start()
        unit.started_at = time.monotonic()

    def _died(self, unit: Supervised, code: int | None, now: float) -> None:
        if now - unit.started_at >= STABLE_AFTER:
            unit.delay = FIRST_DELAY
        unit.child = None
        self._failed(unit, f"exited with code {code}", now)

    def _failed(self, unit: Supervised, why: str, now: float) -> None:
        self.say(f"{unit.name} {why}; restarting in {unit.delay:g}s")
        unit.restart_at = now + unit.delay
        unit.delay = min(MAX_DELAY, unit.delay * 2)
