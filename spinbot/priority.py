"""CPU priority of `spinbot dev`'s children.

On one machine, the work of running jobs and the answers to people share the cores. When queued jobs saturate them,
a status lookup (API, then Redis, then API) waited for a core at each step behind that work: under 60 queued jobs its
p99 was 37–61 ms, and 18–23 ms with the roles below at nice 10, at the same throughput; at 19 it is shorter still
(BENCHMARKS.md). So the roles that run jobs (Temporal, the workers, the relay, the data plane) run at a lower
priority than the API and Redis, which also carry every WebSocket push. Priority only decides who goes first when
the cores are all busy: a core nobody else wants is used by whoever needs it, so an idle stack runs as before.

PostgreSQL is left as it is: its postmaster starts every backend in a session of its own (setsid), where a group
priority set on the postmaster does not reach.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

# Weight 15 against a nice-0 process's 1024 when they contend. 19 against 10, six alternating bench runs each on one
# machine (BENCHMARKS.md): status p99 9.6-15.4 against 12.2-26.5 ms, throughput no lower (another machine lost ~10%).
BATCH_NICE = 19
LOWERED_ROLES = frozenset({"temporal", "worker", "relay", "dataplane"})

# Linux with autogroup scheduling (sched_autogroup_enabled, the default on many kernels) groups each session's
# processes, and every child here has a session of its own: groups share the cores by the group's nice, and a
# thread's own nice counts only against the threads of its group. So both are set.
AUTOGROUP = Path("/proc/self/autogroup")
# Without CAP_SYS_ADMIN the kernel takes one autogroup change per 100 ms, machine-wide, and refuses others (EAGAIN).
AUTOGROUP_TRIES, AUTOGROUP_PAUSE = 10, 0.11


def how_much_lower(role: str, batch_nice: int) -> int:
    """How much lower than the API's a child of `role` is scheduled."""
    return batch_nice if role in LOWERED_ROLES else 0


def lower_priority(amount: int) -> None:
    """Run in a child before exec, after it has its own session: lower its CPU priority by `amount` (0–19), for the
    threads it will start (they inherit it) and, under autogroup scheduling, for its session's group (set to
    `amount`: a new session's group starts at 0). Raising one's own nice needs no privilege. Best effort: a child
    that cannot be lowered still starts, and says so on its stderr."""
    if amount <= 0:
        return
    try:
        os.nice(amount)
        _set_autogroup_nice(amount)
    except OSError as exc:
        os.write(2, f"spinbot: CPU priority not lowered by {amount}: {exc}\n".encode())


def _set_autogroup_nice(amount: int) -> None:
    for _ in range(AUTOGROUP_TRIES):
        try:
            AUTOGROUP.write_text(str(amount))
            return
        except FileNotFoundError:
            return  # a kernel without autogroup: the nice of each thread is what counts
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            time.sleep(AUTOGROUP_PAUSE)
    raise OSError(errno.EAGAIN, f"{AUTOGROUP} kept refusing the change")
