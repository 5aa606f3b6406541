"""`spinbot dev` (behind `make run`): every role as its own process, on embedded services, restartable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from spinbot.services import free_port, popen

pytestmark = pytest.mark.timeout(180)


def _start(data_dir, ports: dict, llm_url: str) -> subprocess.Popen:
    env = dict(os.environ, SPINBOT_LLM_ENDPOINT=llm_url, SPINBOT_LOG_FORMAT="json")
    cmd = [
        sys.executable,
        "-m",
        "spinbot",
        "dev",
        "--data-dir",
        str(data_dir),
        "--sim-seconds",
        "0",
        "--api-port",
        str(ports["api"]),
        "--redis-port",
        str(ports["redis"]),
        "--temporal-port",
        str(ports["temporal"]),
        "--ui-port",
        str(ports["ui"]),
        "--metrics-port",
        str(ports["metrics"]),
    ]
    return popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


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


def _ports() -> dict:
    metrics = free_port()
    while any(_taken(metrics + i) for i in range(3)):
        metrics = free_port()
    return {"api": free_port(), "redis": free_port(), "temporal": free_port(), "ui": free_port(), "metrics": metrics}


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_stack_runs_a_job_exposes_metrics_stops_cleanly_and_remembers(tmp_path, ollama):
    ports = _ports()
    proc = _start(tmp_path / "data", ports, ollama.url)
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
    assert not any(_taken(port) for port in (ports["api"], ports["redis"], ports["temporal"])), (
        "a child outlived the stack"
    )

    proc = _start(tmp_path / "data", ports, ollama.url)
    try:
        _wait_ready(proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10) as api:
            assert api.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "completed"
            _run_job(api)  # and it still runs new ones
    finally:
        assert _stop(proc) == 0


def test_dev_stack_refuses_a_taken_port(tmp_path, ollama):
    ports = _ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["api"]))
        holder.listen()
        proc = _start(tmp_path / "data", ports, ollama.url)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"API port {ports['api']}" in out and "already in use" in out
