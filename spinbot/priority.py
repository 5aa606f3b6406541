"""CPU priority of `spinbot dev`'s children.

On one machine, the work of running jobs and the answers to people share the cores. When queued jobs saturate them,
a status lookup (API, then Redis, then API) waited for a core at each step behind that work: under 60 queued jobs its
p99 was 52–61 ms, where the same lookup takes ~4 ms with the roles below given less weight, at the same throughput
(BENCHMARKS.md). So the roles that run jobs (Temporal, PostgreSQL, the workers, the relay, the data plane) run at a
lower priority than the API and Redis, which also carry every WebSocket push. Priority only decides who goes first
when the cores are all busy: a core nobody else wants is used by whoever needs it, so an idle stack runs as before.
"""

from __future__ import annotations

import os
from pathlib import Path

BATCH_NICE = 10  # weight ~1/9 of a nice-0 process when they contend (the kernel's table: 110 against 1024)
SERVING_ROLES = frozenset({"api", "redis"})  # what answers people; every other child runs jobs

# Linux with autogroup scheduling (sched_autogroup_enabled, the default on many kernels) groups each session's
# processes, and every child here has a session of its own: groups share the cores by the group's nice, and a
# thread's own nice counts only against the threads of its group.
AUTOGROUP = Path("/proc/self/autogroup")


def niceness(role: str, batch_nice: int) -> int:
    """How much lower than ours a child of `role` runs."""
    return 0 if role in SERVING_ROLES else batch_nice


def lower_priority(amount: int) -> None:
    """Run in a child before exec, after it has its own session: lower its CPU priority by `amount` (0–19), for the
    threads it will start (they inherit it) and, under autogroup scheduling, for its session's group. Raising one's
    own nice needs no privilege."""
    if amount <= 0:
        return
    os.nice(amount)
    try:
        AUTOGROUP.write_text(str(amount))
    except OSError:
        pass  # a kernel without autogroup: the nice of each thread is what counts
