"""`spinbot dev` (behind `make run`): every role as its own process, on embedded services, restartable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from spinbot.ports import LOWEST_PORT, free_port, port_taken
from spinbot.priority import BATCH_NICE
from tests.dev_process import DevOutput, dev_children, dev_ports, start_dev

pytestmark = pytest.mark.timeout(180)


def _wait_ready(proc: subprocess.Popen, timeout: float = 90) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout or ():
        lines.append(line)
        if "ready;" in line or time.monotonic() > deadline:
            break
    assert any("ready;" in line for line in lines), "".join(lines)
    return lines


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def _run_job(api: httpx.Client) -> str:
    reply = api.post(
        "/api/jobs", json={"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "dev"}}}
    )
    assert reply.status_code == 200, reply.text
    job_id = reply.json()["jobId"]
    deadline = time.monotonic() + 30
    while api.get(f"/api/status/{job_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, api.get(f"/api/jobs/{job_id}").text
        time.sleep(0.05)
    return job_id


def _run_job_after_a_restart(api: httpx.Client, output: DevOutput, killed: str, timeout: float = 90) -> str:
    """Like _run_job, but a dependency that has just restarted may answer a few requests late or not at all."""
    deadline = time.monotonic() + timeout
    body = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "after a restart"}}}
    job_id = None
    while True:
        if time.monotonic() > deadline:
            try:
                job = api.get(f"/api/jobs/{job_id}").text if job_id else "never created"
            except httpx.HTTPError as exc:
                job = f"not readable ({exc!r})"
            pytest.fail(
                f"no completed job within {timeout}s after {killed} was killed; job {job_id}: {job}\n"
                + "".join(output.lines[-60:])
            )
        try:
            if job_id is None:
                reply = api.post("/api/jobs", json=body)
                job_id = reply.json()["jobId"] if reply.status_code == 200 else None
            elif api.get(f"/api/status/{job_id}").json().get("status") == "completed":
                return job_id
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.1)


def test_dev_stack_runs_a_job_exposes_metrics_stops_cleanly_and_remembers(tmp_path, ollama):
    ports = dev_ports()
    proc = start_dev(tmp_path / "data", ports, ollama.url)
    try:
        printed = "".join(_wait_ready(proc))
        for address in (
            f"http://127.0.0.1:{ports['api']}",
            "/docs",
            f"http://127.0.0.1:{ports['ui']}",
            f"redis://127.0.0.1:{ports['redis']}",
        ):
            assert address in printed
        assert "SIMULATOR" in printed
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            job_id = _run_job(api)
            assert 'spinbot_jobs{status="completed"}' in api.get("/metrics").text
        worker = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics").text
        assert 'spinbot_node_duration_seconds_count{plane="node",service="llm.generate_script"}' in worker
        assert 'spinbot_jobs_finished_total{status="completed"}' in worker
        assert "temporal_" in httpx.get(f"http://127.0.0.1:{ports['metrics'] + 1}/metrics").text
        assert (
            "spinbot_handoff_round_trip_seconds_count"
            in httpx.get(f"http://127.0.0.1:{ports['metrics'] + 2}/metrics").text
        )
    finally:
        code = _stop(proc)
    assert code == 0
    assert not any(port_taken(port) for port in (ports["api"], ports["redis"], ports["temporal"])), (
        "a child outlived the stack"
    )

    proc = start_dev(tmp_path / "data", ports, ollama.url)
    try:
        _wait_ready(proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            assert api.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "completed"
            _run_job(api)  # and it still runs new ones
    finally:
        assert _stop(proc) == 0


def test_dev_stack_refuses_a_taken_port(tmp_path, ollama):
    ports = dev_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["api"]))
        holder.listen()
        proc = start_dev(tmp_path / "data", ports, ollama.url)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"API port {ports['api']}" in out and "already in use" in out


# --- the supervisor (issue 8) -------------------------------------------------------------------------------


def _processes_using(path: Path) -> list[int]:
    """Processes whose command line names `path` (e.g. a postmaster's -D folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_child(proc: subprocess.Popen, output: DevOutput, name: str) -> None:
    """kill -9 one child of the dev stack and wait until the supervisor has started it again."""
    pid = dev_children(proc.pid)[name]
    mark = len(output.lines)
    os.kill(pid, signal.SIGKILL)
    output.wait_for(f"{name} exited with code -9; restarting in", 10, after=mark)
    output.wait_for(f"{name} restarted", 60, after=mark)
    assert dev_children(proc.pid)[name] != pid


ROLES = ("worker", "relay", "dataplane", "api", "temporal", "redis", "postgres")
LOWERED = ("worker", "relay", "dataplane", "temporal")  # PostgreSQL's backends each start a session of their own


def _priorities(pid: int) -> dict[str, tuple[int, int | None]]:
    """Each child's (nice, its session's autogroup nice or None without autogroup), by role."""
    found = {}
    for role, child in dev_children(pid).items():
        nice = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[16])
        group = Path(f"/proc/{child}/autogroup")
        found[role] = (nice, int(group.read_text().split()[-1]) if group.exists() else None)
    return found


def _assert_jobs_run_at_lower_priority(pid: int) -> None:
    """The settings, not their effect (which needs the cores busy: BENCHMARKS.md measures it)."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)  # children inherit it; each starts a session, whose group starts at 0
    autogroup = Path("/proc/self/autogroup").exists()
    as_started = (ours, 0 if autogroup else None)
    lowered = (min(19, ours + BATCH_NICE), BATCH_NICE if autogroup else None)
    assert _priorities(pid) == {role: lowered if role in LOWERED else as_started for role in ROLES}


def test_dev_stack_restarts_a_killed_role_and_each_killed_service(tmp_path, ollama):
    """...with each child's CPU priority as it started: the roles that run jobs below the API and Redis."""
    ports = dev_ports()
    proc = start_dev(tmp_path / "data", ports, ollama.url)
    output = DevOutput(proc)
    try:
        output.wait_for("ready;")
        assert set(dev_children(proc.pid)) >= set(ROLES)
        _assert_jobs_run_at_lower_priority(proc.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            for name in ("worker", "relay", "redis", "postgres", "temporal"):
                _kill_child(proc, output, name)
                _run_job_after_a_restart(api, output, name)  # the stack still runs jobs, on the same ports and data
        _assert_jobs_run_at_lower_priority(proc.pid)
    finally:
        code = _stop(proc)
    assert code == 0, "".join(output.lines[-40:])


def test_a_second_dev_on_the_same_folder_is_refused_and_kill_9_leaves_no_postgres(tmp_path, ollama):
    ports, data = dev_ports(), tmp_path / "data"
    proc = start_dev(data, ports, ollama.url)
    output = DevOutput(proc)
    try:
        output.wait_for("ready;")
        second = start_dev(data, dev_ports(), ollama.url)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1, out
        assert f"another spinbot dev (pid {proc.pid}) is using {data}" in out
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            job_id = _run_job(api)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 30
    while _processes_using(data) or any(port_taken(ports[name]) for name in ("api", "redis", "temporal")):
        assert time.monotonic() < deadline, f"left behind: {_processes_using(data)}"
        time.sleep(0.1)

    proc = start_dev(data, ports, ollama.url)
    output = DevOutput(proc)
    try:
        output.wait_for("ready;")
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            assert api.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "completed"
            _run_job(api)
    finally:
        assert _stop(proc) == 0


def test_a_stack_that_cannot_start_exits_non_zero(tmp_path, ollama):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pg").write_text("not a folder")  # PostgreSQL cannot start here, after Temporal and Redis did
    ports = dev_ports()
    proc = start_dev(data, ports, ollama.url)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out
    assert "cannot start" in out
    assert not any(port_taken(ports[name]) for name in ("redis", "temporal")), "a service outlived the refusal"


def test_ports_chosen_ahead_are_never_ones_the_kernel_may_hand_out_meanwhile():
    """`spinbot dev` is given its ports before it starts Temporal, which takes five more with `bind(0)`; those come
    from the kernel's ephemeral range, and so did ours (a bench run's POST /api/jobs was once answered 404, most
    likely by Temporal's HTTP API on the port chosen for our API)."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(LOWEST_PORT <= port < ephemeral_low for port in ports), sorted(ports)[-5:]
    for port in ports[:20]:  # each could be bound when chosen
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
