"""Real WebSocket clients of `/ws` for tests: JSON in and out, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from urllib.parse import urlencode

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e import BRIDGE


def ws_url(http_url: str, **query: str) -> str:
    url = http_url.replace("http://", "ws://", 1) + "/ws"
    return f"{url}?{urlencode(query)}" if query else url


class WsClient:
    """One connection; `received` keeps (perf_counter, message) of every update read."""

    def __init__(self, connection: ClientConnection):
        self.connection = connection
        self.received: list[tuple[float, dict]] = []

    async def send(self, message: dict | str | bytes) -> None:
        await self.connection.send(json.dumps(message) if isinstance(message, dict) else message)

    async def recv(self, timeout: float = 5) -> dict:
        message = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        self.received.append((time.perf_counter(), message))
        return message

    async def recv_about(self, job_id: str, timeout: float = 5) -> dict:
        """The next message about `job_id` (or about no job); updates of other jobs it follows are skipped."""

        async def read():
            while (message := await self.recv(timeout)).get("jobId", job_id) != job_id:
                pass
            return message

        return await asyncio.wait_for(read(), timeout)

    async def subscribe(self, job_id: str, timeout: float = 5) -> dict:
        """Subscribe and return the current state that must follow the acknowledgement."""
        await self.send({"action": "subscribe", "jobId": job_id})
        assert await self.recv_about(job_id, timeout) == {
            "action": "response",
            "message": "subscribed",
            "jobId": job_id,
        }
        state = await self.recv_about(job_id, timeout)
        assert state["type"] == "update" and state["jobId"] == job_id, state
        return state

    async def updates_until(self, job_id: str, status: str = "completed", timeout: float = 20) -> list[dict]:
        """Updates of `job_id` read until one has `status` (included)."""

        async def read():
            updates = []
            while True:
                message = await self.recv_about(job_id, timeout)
                assert message.get("type") == "update", message
                updates.append(message)
                if message["status"] == status:
                    return updates

        return await asyncio.wait_for(read(), timeout)

    async def close_code(self, timeout: float = 10) -> int | None:
        """Read (and keep) everything until the server ends the connection; the close code (1006: no close frame)."""

        async def drain():
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.recv(timeout)
            return self.connection.close_code

        return await asyncio.wait_for(drain(), timeout)


@contextlib.asynccontextmanager
async def ws_client(http_url: str, query: dict | None = None, **options):
    """A connected client of the API at `http_url`; `options` go to `websockets` (e.g. max_queue, sock)."""
    options = {"proxy": None, "open_timeout": 5, "close_timeout": 2, **options}
    connection = await asyncio.wait_for(connect(ws_url(http_url, **(query or {})), **options), 10)
    try:
        yield WsClient(connection)
    finally:
        await asyncio.wait_for(connection.close(), 5)


@contextlib.asynccontextmanager
async def ws_clients(http_url: str, count: int, **options):
    """`count` clients connected concurrently."""
    async with contextlib.AsyncExitStack() as stack:
        yield await asyncio.gather(*(stack.enter_async_context(ws_client(http_url, **options)) for _ in range(count)))


async def publish(redis, kind: str, job_id: str, **payload) -> None:
    """Play a plane publishing on channel:<kind>:<jobId> (PROTOCOL §4)."""
    message = {"jobId": job_id, **payload, "created": str(int(time.time() * 1000))}
    await redis.publish(BRIDGE.channel(kind, job_id), json.dumps(message))


async def metrics(api) -> dict[tuple[str, tuple], float]:
    """GET /metrics as {(sample name, sorted labels): value}."""
    reply = await api.get("/metrics")
    assert reply.status_code == 200, reply.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
