"""A TCP proxy for fault tests: it forwards both ways until it holds, then never delivers what clients send (a
network that stopped delivering one way), so a test can catch a process with a call in flight; or it silences the
connections open at that moment, both ways and without a reset (a frozen host, a lost NAT entry), while new ones
pass; or, from `refuse()` until `accept()`, it resets what is open and closes every connection as it comes (a server
restarting)."""

from __future__ import annotations

import asyncio
import contextlib


class HoldingProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.holding = False
        self.refusing = False
        self.held_bytes = 0
        self._open: set[object] = set()  # a token per connection
        self._writers: set[asyncio.StreamWriter] = set()
        self._silenced: set[object] = set()
        self._pumps: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def refuse(self) -> None:
        self.refusing = True
        for writer in self._writers:
            writer.transport.abort()

    def accept(self) -> None:
        self.refusing = False

    def go_silent(self) -> None:
        """From now on the connections open now deliver nothing, either way, and are never reset."""
        self._silenced |= self._open

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        link = object()
        self._open.add(link)
        self._writers |= {writer, up_writer}
        for pump in (
            self._pump(link, reader, up_writer, outbound=True),
            self._pump(link, up_reader, writer, outbound=False),
        ):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(
        self, link: object, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if link in self._silenced:
                    continue
                if outbound and self.holding:
                    self.held_bytes += len(chunk)  # never delivered
                    continue
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
