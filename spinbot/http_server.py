"""The API's HTTP server: uvicorn with limits, so slow or idle clients cannot pin connections.

uvicorn times out only an idle keep-alive connection, and any byte resets that timer: a client that
opens a connection and never finishes its request head (or sends it a byte at a time) is held for ever.
Here every request head must arrive whole within `api_header_timeout_seconds` of the connection opening
(or of the previous response), and within `api_max_header_bytes`; otherwise the connection is closed.

A WebSocket is not read while what the server has written to it waits unsent (`PongBackpressure`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from core.settings import Settings

log = logging.getLogger(__name__)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn; h11 always works
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class HeadDeadline:
    """Mixin for a uvicorn HTTP protocol: the request head must arrive in time and in bounded size."""

    config: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self._head_timer is not None and self._head_bytes > self.config.spinbot_max_header_bytes:
            self._refuse("request head over %d bytes", self.config.spinbot_max_header_bytes)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        # Else a pipelined request's head is already here, or this request's body is still streaming in after an
        # early answer (a 413, say): those bytes are no head. The deadline then starts when the body has ended.
        waiting = cycle is None or (cycle.response_complete and not cycle.more_body)
        if waiting and not self.transport.is_closing():
            self._await_head()  # the next request on this keep-alive connection gets the same deadline

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.config.spinbot_header_timeout, self._head_too_slow)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse("no complete request head within %gs", self.config.spinbot_header_timeout)

    def _refuse(self, reason: str, limit: float) -> None:
        self._head_arrived()
        if not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            log.info("closing connection from %s: " + reason, peer, limit)
            self.transport.close()


class H11HeadDeadline(HeadDeadline, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        # IDLE until a whole request line and headers are parsed (then SEND_BODY, DONE or an upgrade).
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()
        elif self._head_timer is None and self.conn.our_state is h11.IDLE and not self.transport.is_closing():
            self._await_head()  # a body that outlived its early answer has ended


if HttpToolsProtocol is not None:

    class HttpToolsHeadDeadline(HeadDeadline, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            self._head_arrived()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            cycle = getattr(self, "cycle", None)  # none yet for a WebSocket upgrade
            if cycle is not None and cycle.response_complete and not self.transport.is_closing():
                self._await_head()  # a body that outlived its early answer has ended


def protocol_class(name: str = "auto") -> type[asyncio.Protocol]:
    """Our protocol for `name` ("h11", "httptools" or "auto": httptools when installed)."""
    if name == "httptools" or (name == "auto" and HttpToolsProtocol is not None):
        if HttpToolsProtocol is None:
            raise RuntimeError("httptools is not installed")
        return HttpToolsHeadDeadline
    return H11HeadDeadline


class PongBackpressure(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, not reading a client while the transport holds more than it can write to it.

    The protocol answers every ping with a pong written at once, whether or not the client reads: a client that pings
    in a loop and reads nothing had the server buffer every pong (+450 MB in 40 s, until it left). Reading stops
    when the transport pauses our writes and starts again when they resume, so such a client is stopped by its own
    full socket. uvicorn also pauses reading while the app has a message unread; reading resumes only when neither
    holds it back."""

    def pause_writing(self) -> None:
        super().pause_writing()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.read_paused:  # else the app still has a message to take, and receive() resumes reading
            self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await super().receive()  # resumes reading once the app has taken every message
        if not self.writable.is_set():
            self.transport.pause_reading()  # at once, before the event loop can read anything
        return message


# A client's messages are a few hundred bytes: the API answers `failed` to any over 4 KiB, and to garbage of up to
# this size, keeping the socket. A larger message closes the socket with 1009 as it arrives, instead of being
# buffered whole: uvicorn's default is 16 MiB a message, from every client at once.
WS_MAX_MESSAGE_BYTES = 1 << 20


def server_config(
    app: Any, settings: Settings, host: str, port: int, http: str = "auto", **extra: Any
) -> uvicorn.Config:
    """uvicorn's Config for the API with the connection limits from settings."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(http),
        ws=PongBackpressure,
        timeout_keep_alive=settings.api_keep_alive_seconds,
        limit_concurrency=settings.api_max_connections,
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
        ws_per_message_deflate=False,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        **extra,
    )
    # Read by HeadDeadline through the protocol's `config`.
    config.spinbot_header_timeout = settings.api_header_timeout_seconds  # type: ignore[attr-defined]
    config.spinbot_max_header_bytes = settings.api_max_header_bytes  # type: ignore[attr-defined]
    return config
