"""`spinbot dev` as a child process, for the tests that check it and for `make bench`: one command line, read
through one output reader, its children found by role."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from spinbot.ports import free_port, port_taken
from spinbot.services import popen


def dev_ports() -> dict[str, int]:
    """Free ports for the API, Redis, Temporal, its UI and the three metrics ports from `metrics` on, all distinct
    (each pick is only free when made, so two picks could otherwise be the same port)."""
    chosen: set[int] = set()

    def pick(width: int = 1) -> int:
        while True:
            port = free_port()
            span = set(range(port, port + width))
            if not span & chosen and not any(port_taken(p) for p in span):
                chosen.update(span)
                return port

    metrics = pick(3)
    return {"api": pick(), "redis": pick(), "temporal": pick(), "ui": pick(), "metrics": metrics}


def start_dev(data_dir: Path, ports: dict[str, int], llm_url: str, env: dict[str, str] | None = None):
    """`spinbot dev` on `ports` with a zero-time simulated data plane; its output on a pipe (text)."""
    cmd = [sys.executable, "-m", "spinbot", "dev", "--data-dir", str(data_dir), "--sim-seconds", "0"]
    for option in ("api", "redis", "temporal", "ui", "metrics"):
        cmd += [f"--{option}-port", str(ports[option])]
    environment = dict(os.environ, SPINBOT_LLM_ENDPOINT=llm_url, SPINBOT_LOG_FORMAT="json", **(env or {}))
    return popen(cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


class DevOutput:
    """Everything `spinbot dev` prints, read on a thread so its pipe never fills."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout or ():
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 90, after: int = 0) -> int:
        """The index of the first line from `after` on that contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(after, len(self.lines)):
                if text in self.lines[index]:
                    return index
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout}s:\n" + "".join(self.lines[-40:]))


def dev_children(pid: int) -> dict[str, int]:
    """The direct children of `pid` by role: worker, relay, dataplane, api, temporal, redis, postgres."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != pid:
            continue
        program = Path(cmdline[0].split(" ")[0]).name  # redis-server rewrites its title: "redis-server host:port"
        name = cmdline[3] if "spinbot" in cmdline[:3] and len(cmdline) > 3 else program.replace("-server", "")
        found[name] = int(entry.name)
    return found
