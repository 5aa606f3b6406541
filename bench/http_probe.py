"""A light HTTP/1.1 client for driving and timing the API: keep-alive connections speaking h11 (the sans-I/O parser
uvicorn uses) over asyncio streams. httpx's own work was most of what a paced GET measured (~4 ms a request on an
idle stack, where the same request written to a socket by hand is answered in ~0.1 ms), and with 60 submissions at
once its pool's bookkeeping made the bench, which shares the machine's two cores with the stack, one of the larger
consumers of CPU per job. Browsers, the real clients, cost the stack nothing of the kind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import h11

# Idle connections are dropped before uvicorn's keep-alive (5 s) ends, so a reuse never races the server's close.
KEEPALIVE_EXPIRY = 2.0


class HttpProbe:
    """One keep-alive connection, one request at a time."""

    def __init__(self, base_url: str, timeout: float = 30):
        url = urlsplit(base_url)
        self.host, self.port, self.timeout = url.hostname or "127.0.0.1", url.port or 80, timeout
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.http = h11.Connection(h11.CLIENT)
        self.used_at = 0.0

    async def get(self, path: str) -> bytes:
        """The body of a 200 answer."""
        status, body = await self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return body

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body) of one exchange; a connection idle past KEEPALIVE_EXPIRY is replaced first."""
        if self.streams is not None and time.monotonic() - self.used_at > KEEPALIVE_EXPIRY:
            await self.aclose()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(method, path, body)
        except BaseException:
            await self.aclose()  # a half-read answer would be taken for the next one's
            raise
        finally:
            self.used_at = time.monotonic()

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.streams, self.http = (reader, writer), h11.Connection(h11.CLIENT)
        reader, writer = self.streams
        headers = [("host", self.host)]
        if body:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = self.http.send(h11.Request(method=method, target=path, headers=headers))
        if body:
            out += self.http.send(h11.Data(data=body))
        writer.write(out + self.http.send(h11.EndOfMessage()))
        await writer.drain()
        status, chunks = 0, []
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the API closed the connection")
                self.http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if h11.MUST_CLOSE in (self.http.our_state, self.http.their_state):
                    await self.aclose()  # the server said `Connection: close` (a 503 at its limit, a shutdown)
                else:
                    self.http.start_next_cycle()
                return status, b"".join(chunks)


class ApiClient:
    """Requests to the API over up to `connections` keep-alive connections, each opened when first needed."""

    def __init__(self, base_url: str, connections: int = 100, timeout: float = 60):
        self.base_url, self.timeout = base_url, timeout
        self.idle: list[HttpProbe] = []
        self.slots = asyncio.Semaphore(connections)
        self.opened = 0  # connection objects made so far (each reconnects by itself after its keep-alive expiry)

    async def post_json(self, path: str, document: object) -> tuple[int, bytes]:
        return await self.request("POST", path, json.dumps(document).encode())

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        async with self.slots:
            connection = self.idle.pop() if self.idle else self._new()
            answer = await connection.request(method, path, body)
            self.idle.append(connection)  # only after a whole exchange: a failed one closed it (see request)
            return answer

    def _new(self) -> HttpProbe:
        self.opened += 1
        return HttpProbe(self.base_url, self.timeout)

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            await connection.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
