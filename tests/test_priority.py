"""`spinbot dev` lowers the CPU priority of the roles that run jobs (spinbot/priority.py), also for a user without
CAP_SYS_ADMIN, whom the kernel allows one autogroup change per 100 ms machine-wide. tests/test_dev_stack.py checks
every child of a real `spinbot dev` (as this process's user)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Three children started at once, as `spinbot dev` starts worker, relay and data plane: each one's nice and its
# session's autogroup nice.
STARTS_THREE = """
import sys
from pathlib import Path
from spinbot.services import popen
children = [popen([sys.executable, "-c", "import time; time.sleep(30)"], 10) for _ in range(3)]
for child in children:
    stat = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    print(stat[16], Path(f"/proc/{child.pid}/autogroup").read_text().split()[-1])
    child.kill()
"""


def _without_sys_admin() -> list[str]:
    """A prefix that runs a command as root would without CAP_SYS_ADMIN: as any other user does."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) drops CAP_SYS_ADMIN for this test")
    return [setpriv, "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without autogroup scheduling")
def test_children_started_together_are_each_lowered_without_cap_sys_admin():
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    command = [*_without_sys_admin(), sys.executable, "-c", STARTS_THREE]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [f"{min(19, ours + 10)} 10"] * 3, done.stdout + done.stderr


def test_the_batch_priority_is_read_from_the_environment_and_checked():
    """SPINBOT_BATCH_NICE sets --batch-nice (the bench compares priorities through it); out of range, dev refuses
    before it starts anything."""
    env = dict(os.environ, SPINBOT_BATCH_NICE="25", COLUMNS="200")  # wide enough for typer's message on one line
    run = subprocess.run(
        [sys.executable, "-m", "spinbot", "dev", "--data-dir", "/nonexistent/never-made"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "(env var: 'SPINBOT_BATCH_NICE')" in run.stderr and "less than or equal to 19" in run.stderr
