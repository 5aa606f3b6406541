"""`spinbot dev` for the benchmark: on free ports in a temporary folder, a zero-time simulated data plane and an
Ollama-speaking peer in a process of its own (bench/llm_peer.py) that answers at once, or after `llm.hold`."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.llm_peer import LlmPeer
from tests.dev_process import DevOutput, dev_children, dev_ports, start_dev

OPEN_FILES = 8192  # 1,000 WebSocket clients here and their 1,000 sockets in the API (which inherits the limit)


@dataclass
class BenchStack:
    proc: subprocess.Popen
    output: DevOutput
    ports: dict[str, int]
    llm: LlmPeer

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.ports['temporal']}"

    @property
    def database_url(self) -> str:
        """From `spinbot dev`'s own address line (its PostgreSQL listens on a unix socket in the data folder)."""
        line = next(line for line in self.output.lines if "] PostgreSQL " in line)
        return line.split("PostgreSQL", 1)[1].strip()

    def pid(self, role: str) -> int:
        """The process id of one of `spinbot dev`'s children (api, worker, relay...): a scan of /proc, so looked up
        before a timed window, not inside it (it holds the event loop for milliseconds)."""
        return dev_children(self.proc.pid)[role]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_open_files_limit(wanted: int = OPEN_FILES) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )


@contextlib.contextmanager
def bench_stack(env: dict[str, str] | None = None) -> Iterator[BenchStack]:
    raise_open_files_limit()
    with LlmPeer() as llm, tempfile.TemporaryDirectory(prefix="spinbot-bench-") as data:
        ports = dev_ports()
        proc = start_dev(Path(data) / "data", ports, llm.url, env)
        output = DevOutput(proc)
        try:
            output.wait_for("ready;", timeout=180)
            yield BenchStack(proc, output, ports, llm)
        finally:
            proc.terminate()
            proc.wait(60)
