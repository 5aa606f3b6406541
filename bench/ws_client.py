"""A WebSocket client of `/ws` that costs the machine little: websockets' sans-I/O protocol under a plain asyncio
protocol, with no task, queue or timer of its own. A thousand of them share the two cores with the API they measure,
and a browser's work happens on another machine: each of websockets' asyncio clients ran a reader task and a
keep-alive task, and together they used more CPU than the API itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

Match = Callable[[dict], bool]


class BenchClient(asyncio.Protocol):
    def __init__(self, url: str):
        self.ws = ClientProtocol(parse_uri(url))
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.waiters: list[tuple[bytes, Match, asyncio.Future[tuple[float, dict]]]] = []
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def connect(cls, http_url: str, timeout: float) -> BenchClient:
        url = http_url.replace("http://", "ws://", 1) + "/ws"
        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, client = await loop.create_connection(lambda: cls(url), uri.host, uri.port)
        try:
            async with asyncio.timeout(timeout):
                await client.opened
        except BaseException:
            client.close()  # a handshake refused or too slow: its socket is not left open
            raise
        return client

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response) and event.status_code == 101:
                self._settle(self.opened, None)
            elif isinstance(event, Response):
                self._fail(event.status_code)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._deliver(arrived, bytes(event.data))
        self._flush()  # pongs and close frames the protocol answers by itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or "closed")

    def send(self, message: dict) -> None:
        self.ws.send_text(json.dumps(message).encode())
        self._flush()

    def expect(self, contains: str, match: Match) -> asyncio.Future[tuple[float, dict]]:
        """(arrival, message) of the next message that contains that text and that `match` accepts, from now on.
        Only frames with the text are parsed; a message nobody expects is dropped."""
        future: asyncio.Future[tuple[float, dict]] = asyncio.get_running_loop().create_future()
        self.waiters.append((contains.encode(), match, future))
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _deliver(self, arrived: float, data: bytes) -> None:
        if not any(contains in data for contains, _, _ in self.waiters):
            return
        message = json.loads(data)
        for waiter in list(self.waiters):
            contains, match, future = waiter
            if future.done():  # given up on
                self.waiters.remove(waiter)
            elif contains in data and match(message):
                self.waiters.remove(waiter)
                future.set_result((arrived, message))

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for data in self.ws.data_to_send():
                if data:
                    self.transport.write(data)

    def _fail(self, why: object) -> None:
        failure = ConnectionError(f"WebSocket closed: {why}")
        futures: list[asyncio.Future] = [self.opened, *(future for _, _, future in self.waiters)]
        for future in futures:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # retrieved: a client nobody waits on is simply gone
        self.waiters.clear()

    @staticmethod
    def _settle(future: asyncio.Future, result) -> None:
        if not future.done():
            future.set_result(result)
