"""Slow clients cannot pin the API's connections (issue 8): a real uvicorn server with our protocol and limits,
and a real `spinbot api` process, against raw sockets that never finish (or trickle) their request head."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from websockets.asyncio.client import connect

from core.settings import Settings
from spinbot.http_server import server_config
from spinbot.ports import free_port
from spinbot.services import popen, wait_for_port

pytestmark = pytest.mark.timeout(60)

HEAD_TIMEOUT = 0.5
CLOSED_WITHIN = 5.0  # a bound, far above the timeout: only "for ever" fails


def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(HEAD_TIMEOUT * 3)  # longer than the head deadline: it must not cut a request short
        return {"slow": True}

    @app.post("/early")
    async def early():  # answers before reading the body, as a body-size limit does
        return JSONResponse({"error": "too large"}, status_code=413)

    @app.websocket("/echo")
    async def echo(socket: WebSocket):
        await socket.accept()
        while True:
            await socket.send_text(await socket.receive_text())

    return app


@contextlib.asynccontextmanager
async def serving(http: str, head_timeout: float = HEAD_TIMEOUT, **limits):
    settings = Settings(api_header_timeout_seconds=head_timeout, **limits)
    port = free_port()
    server = uvicorn.Server(server_config(small_app(), settings, "127.0.0.1", port, http=http, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert not task.done() and time.monotonic() < deadline, "server did not start"
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def closed_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes = b"") -> float:
    """Seconds until the server closes the connection, sending `trickle` every 0.1 s meanwhile (a slowloris)."""
    started = time.monotonic()
    while time.monotonic() - started < CLOSED_WITHIN:
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.1)
        except TimeoutError:
            if trickle:
                with contextlib.suppress(ConnectionError):
                    writer.write(trickle)
            continue
        except ConnectionError:
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
        assert b" 200 " not in data, data
    raise AssertionError(f"connection still open after {CLOSED_WITHIN}s")


async def open_connection(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


PROTOCOLS = ["h11", "httptools"]


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_connection_that_sends_nothing_is_closed(http):
    async with serving(http) as port:
        reader, writer = await open_connection(port)
        await closed_by_server(reader, writer)
        writer.close()


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_head_trickled_a_header_at_a_time_is_closed(http):
    async with serving(http) as port:
        reader, writer = await open_connection(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        await closed_by_server(reader, writer, trickle=b"X-Slow: 1\r\n")
        writer.close()


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_head_after_a_keep_alive_response_has_the_same_deadline(http):
    async with serving(http, api_keep_alive_seconds=30) as port:
        reader, writer = await open_connection(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in await asyncio.wait_for(reader.read(65536), 5)
        writer.write(b"GET /ok HTTP/1.1\r\n")
        await closed_by_server(reader, writer, trickle=b"X: 1\r\n")
        writer.close()


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_many_unfinished_heads_are_all_closed(http):
    async with serving(http) as port:
        connections = await asyncio.gather(*(open_connection(port) for _ in range(300)))
        for _, writer in connections:
            writer.write(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Le")
        await asyncio.gather(*(closed_by_server(reader, writer) for reader, writer in connections))
        for _, writer in connections:
            writer.close()


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_an_oversized_head_is_refused(http):
    async with serving(http, api_max_header_bytes=4096) as port:
        reader, writer = await open_connection(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        await closed_by_server(reader, writer)
        writer.close()


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_good_clients_are_unaffected(http):
    async with serving(http) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        # Keep-alive reuse, and a request that runs longer than the head deadline.
        assert [(await client.get("/ok")).status_code for _ in range(3)] == [200, 200, 200]
        assert (await client.get("/slow")).json() == {"slow": True}
        async with connect(f"ws://127.0.0.1:{port}/echo", proxy=None) as socket:
            await asyncio.sleep(HEAD_TIMEOUT * 3)  # an upgraded connection is no longer waiting for a head
            await socket.send("still here")
            assert await asyncio.wait_for(socket.recv(), 5) == "still here"


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_body_still_streaming_after_an_early_answer_is_not_taken_for_a_head(http):
    async def body():  # far more than a head may be, sent after the server has answered
        for _ in range(10):
            yield b" " * (100 << 10)
            await asyncio.sleep(0.01)

    async with serving(http) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        reply = await client.post("/early", content=body())
        assert (reply.status_code, reply.json()) == (413, {"error": "too large"})
        assert (await client.get("/ok")).json() == {"ok": True}


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_past_the_connection_limit_requests_are_503(http):
    # A long head deadline: the idle connections must still be open when the request comes, on a busy machine too.
    async with serving(http, head_timeout=30, api_max_connections=3) as port:
        idle = await asyncio.gather(*(open_connection(port) for _ in range(3)))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ok")).status_code == 503
        for _, writer in idle:
            writer.close()
        # Once the idle ones are gone, requests are served again.
        deadline = time.monotonic() + CLOSED_WITHIN
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while (await client.get("/ok")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)


async def test_spinbot_api_closes_an_unfinished_head(services, database_url):
    """The real `spinbot api` process takes its limits from settings."""
    port = free_port()
    env = dict(
        os.environ,
        SPINBOT_TEMPORAL_ADDRESS=services.temporal_address,
        SPINBOT_REDIS_URL=services.redis_url,
        SPINBOT_DATABASE_URL=database_url,
        SPINBOT_API_PORT=str(port),
        SPINBOT_API_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    proc = popen([sys.executable, "-m", "spinbot", "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await asyncio.to_thread(wait_for_port, port, proc, "spinbot api", 60)
        reader, writer = await open_connection(port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        await closed_by_server(reader, writer, trickle=b"X: 1\r\n")
        writer.close()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
