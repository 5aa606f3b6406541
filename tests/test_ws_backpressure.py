"""`/ws` under bursts, through raw sockets so the bytes arrive exactly as a hostile or hurried client sends them.

A client that pings without reading is no longer read (it had the API buffer every pong: +450 MB in 40 s), and a
client that sends many messages in one write gets every answer (it was closed with 1013, "too slow", unread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

from tests.stack import api_replica
from tests.ws_clients import ws_client

pytestmark = pytest.mark.timeout(90)

TEXT, CLOSE, PING = 0x1, 0x8, 0x9
STALL = 2.0  # a write that has waited this long: the server has stopped reading
FLOOD_LIMIT = 64 << 20  # far more than the kernel buffers hold both ways (~8 MB on loopback), far less than "no limit"


def masked(payload: bytes | str, opcode: int = TEXT) -> bytes:
    """One final client frame (clients must mask, RFC 6455 §5.3) of under 126 bytes."""
    data = payload.encode() if isinstance(payload, str) else payload
    assert len(data) < 126
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


PINGS = masked(b"p" * 125, PING) * 100  # the largest control frames, 13 KB a write


async def handshake(http_url: str, receive_buffer: int | None = None):
    """A raw WebSocket connection to `/ws`: (reader, writer) past the 101. `receive_buffer` shrinks the client's
    kernel receive buffer, so a client that does not read backs the server's writes up quickly."""
    address = urlsplit(http_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    async with asyncio.timeout(5):
        await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {address.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame (servers do not mask): (opcode, payload)."""
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8))
    return head[0] & 0x0F, await reader.readexactly(size)


async def flood(writer: asyncio.StreamWriter, limit: int) -> int:
    """Write pings until `limit` bytes are taken or a write has waited STALL seconds; the bytes taken."""
    sent = 0
    while sent < limit:
        writer.write(PINGS)
        try:
            async with asyncio.timeout(STALL):
                await writer.drain()
        except TimeoutError:
            return sent
        sent += len(PINGS)
    return sent


async def read_all(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def test_a_client_that_pings_and_never_reads_is_no_longer_read(stack):
    """Each ping is answered with a pong; a client that never reads them must be stopped, not buffered for."""
    async with api_replica(stack.settings, stack.temporal) as url:
        reader, writer = await handshake(url, receive_buffer=4096)
        try:
            sent = await flood(writer, FLOOD_LIMIT)
            # Before: never stalled; the server read on and buffered a pong for every ping, 64 MiB here.
            assert sent < FLOOD_LIMIT, f"the server read {sent >> 20} MiB of pings and queued every pong"

            async with ws_client(url) as other:  # the flood stalls only its own socket
                assert (await other.subscribe(str(uuid.uuid4())))["status"] == "not_found"

            reading = asyncio.create_task(read_all(reader))  # once the client reads its pongs, it is read again
            try:
                assert await flood(writer, 1 << 20) >= 1 << 20, "the socket was not read again once its pongs were"
            finally:
                reading.cancel()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


BURST = 300  # over the 256 unread answers that mark a client as too slow, in one TCP write


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        ({"action": "unsubscribe", "jobId": "u-1"}, {"action": "response", "message": "unsubscribed", "jobId": "u-1"}),
        ("not json", {"action": "response", "message": "failed"}),
    ],
)
async def test_a_burst_of_messages_in_one_write_gets_every_answer(stack, message, answer):
    reader, writer = await handshake(stack.api_url)
    try:
        writer.write(masked(json.dumps(message) if isinstance(message, dict) else message) * BURST)
        answers: list[dict] = []
        async with asyncio.timeout(10):
            while len(answers) < BURST:
                opcode, payload = await read_frame(reader)
                # Before: closed with 1013 "client too slow" after 256 answers it was never given the chance to read.
                assert opcode != CLOSE, f"closed after {len(answers)} answers: {payload[:2].hex()} {payload[2:]!r}"
                if opcode == TEXT:
                    answers.append(json.loads(payload))
        assert answers == [answer] * BURST
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
