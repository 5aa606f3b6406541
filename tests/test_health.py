"""`spinbot health` (every container's healthcheck) and SPINBOT_METRICS_HOST (metrics reachable from other hosts)."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from temporalio.client import Client

from core.settings import Settings
from spinbot.ports import free_port
from spinbot.services import popen
from spinbot.worker import WorkerRoles, running_workers

# 127.0.0.2 is loopback too, but a socket bound to 127.0.0.1 does not answer there; one bound to 0.0.0.0 does.
# So it stands in for "another container" without leaving this machine.
OTHER_ADDRESS = "127.0.0.2"


def _spinbot(*args, timeout: float = 30, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spinbot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b'{"status": "ready"}'

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_peer():
    """A real HTTP server answering every GET with the status and body the test sets on the handler class."""
    handler = type("Handler", (_Answer,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_is_zero_on_a_2xx_answer(http_peer):
    _, url = http_peer
    result = _spinbot("health", "--url", f"{url}/ready")
    assert result.returncode == 0, result.stderr
    assert f"healthy: {url}/ready" in result.stdout


def test_health_is_one_line_and_exit_1_on_503(http_peer):
    handler, url = http_peer
    handler.status, handler.body = 503, b'{"error": "Redis unreachable"}'
    result = _spinbot("health", "--url", f"{url}/ready")
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr and "Redis unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_is_exit_1_when_nothing_listens():
    result = _spinbot("health", "--url", f"http://127.0.0.1:{free_port()}/metrics", "--timeout", "2")
    assert result.returncode == 1
    assert "unhealthy" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_defaults_to_the_api_readiness_on_this_host(http_peer):
    """No --url: what the image's HEALTHCHECK runs, the API's /ready on SPINBOT_API_PORT."""
    _, url = http_peer
    port = url.rsplit(":", 1)[1]
    assert _spinbot("health", SPINBOT_API_PORT=port).returncode == 0
    assert _spinbot("health", SPINBOT_API_PORT=str(free_port()), timeout=30).returncode == 1


def _answers(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"role exited with code {proc.returncode}"
        if _spinbot("health", "--url", url, "--timeout", "1").returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def _role(args: list[str], services, **env) -> subprocess.Popen:
    env = dict(
        os.environ,
        SPINBOT_TEMPORAL_ADDRESS=services.temporal_address,
        SPINBOT_REDIS_URL=services.redis_url,
        SPINBOT_DATABASE_URL=services.database_url,
        **env,
    )
    return popen([sys.executable, "-m", "spinbot", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_worker_metrics_and_sdk_metrics_bind_to_metrics_host(services):
    own, sdk = free_port(), free_port()
    args = ["worker", "--activities", "--metrics-port", str(own), "--sdk-metrics-port", str(sdk)]
    proc = _role(args, services, SPINBOT_METRICS_HOST="0.0.0.0")
    try:
        _wait_healthy(proc, f"http://{OTHER_ADDRESS}:{own}/metrics")
        _wait_healthy(proc, f"http://{OTHER_ADDRESS}:{sdk}/metrics")
    finally:
        _stop(proc)


def test_metrics_stay_on_loopback_by_default(database_url, services):
    port = free_port()
    proc = _role(["relay", "--metrics-port", str(port)], services)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/metrics")
        assert not _answers(OTHER_ADDRESS, port)
    finally:
        _stop(proc)


def test_worker_refuses_a_queue_no_service_runs_on(services):
    """A typo in `--queue` would leave a healthy-looking process polling nothing."""
    proc = _role(["worker", "--activities", "--queue", "spinbot.nope"], services)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1
    assert b"no node-plane service runs on queue spinbot.nope" in stderr and b"Traceback" not in stderr


async def test_a_worker_that_stops_by_itself_is_signalled(services):
    """The worker command ends when a worker stops (here: its namespace does not exist), so it gets restarted."""
    client = await Client.connect(services.temporal_address, namespace=f"absent-{uuid.uuid4()}")
    settings = Settings(redis_url=services.redis_url, database_url=services.database_url)
    stopped = asyncio.Event()
    async with running_workers(client, settings, WorkerRoles(workflows=False, activities=True), stopped):
        await asyncio.wait_for(stopped.wait(), 30)
