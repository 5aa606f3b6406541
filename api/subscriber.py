"""One WebSocket client of the hub: its outbox, the loop that sends it, and the watch that finds stalled sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict

from fastapi import WebSocket

from core.metrics import WS_ERRORS, WS_SENT
from core.supervise import TaskHealth

QUEUE_LIMIT = 256  # answers to a client's own messages it has not read yet
SEND_TIMEOUT = 10.0
SLOW_CLIENT_CLOSE = 1013  # "try again later": it fell too far behind
SEND_WATCH = "ws-send-watch"  # the supervised task that drops stalled clients
WATCH_INTERVAL = 1.0


class ClientTooSlow(Exception):
    """How a client's sender ends when the client has fallen too far behind."""


class Subscriber:
    """One client: what is still to be sent to it, and the loop that sends it (a task of its own, started by the route).

    Updates are coalesced: the outbox holds at most one per job, the newest, so a client that reads slower than a
    job changes gets fewer messages rather than a longer queue, and a burst costs each client a few sends at most.
    Replies to the client's own messages are never coalesced; a client that keeps asking without reading them is
    dropped, and so is one whose socket has taken nothing for `send_timeout` seconds.
    """

    def __init__(self, socket: WebSocket, send_timeout: float = SEND_TIMEOUT):
        self.socket, self.send_timeout = socket, send_timeout
        self.jobs: set[str] = set()
        # job id -> its newest update, or reply number -> reply, in the order they are to be sent
        self.outbox: OrderedDict[str | int, str] = OrderedDict()
        self.replies = itertools.count()
        self.replies_queued = 0  # bounded: updates are bounded by the jobs followed, replies by this
        self.waiting = asyncio.Event()
        self.dropped = False  # fell too far behind: its sender ends and the socket is closed with 1013
        self.sender: asyncio.Task | None = None
        self.sending_since: float | None = None  # the event loop's time when the send under way began

    def offer_update(self, job_id: str, message: str) -> None:
        """Queue a job's newest state in place of any older one not yet sent (after what is queued, so a reply
        about the job never follows a state newer than itself)."""
        self.outbox.pop(job_id, None)
        self.outbox[job_id] = message
        self.waiting.set()

    def offer(self, message: str) -> bool:
        """Queue a reply; False when the client has fallen too far behind (it is then dropped)."""
        if self.dropped:
            return False
        if self.replies_queued >= QUEUE_LIMIT:
            self.drop()
            return False
        self.outbox[next(self.replies)] = message
        self.replies_queued += 1
        self.waiting.set()
        return True

    def stalled(self, now: float) -> bool:
        """Its socket has taken nothing for `send_timeout` seconds: stalled, or gone without a word."""
        return self.sending_since is not None and now - self.sending_since > self.send_timeout

    def drop(self) -> None:
        """Give up on the client: its sender ends with ClientTooSlow, and the route closes the socket with 1013."""
        if self.dropped:
            return
        self.dropped = True
        WS_ERRORS.labels(kind="slow_client").inc()
        if self.sender is not None and self.sender is not asyncio.current_task():
            self.sender.cancel()  # it may be waiting for a socket that takes nothing

    async def send_forever(self) -> None:
        """Send what is queued as the socket takes it; raises ClientTooSlow once the client is dropped."""
        self.sender = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            while not self.dropped:
                if not self.outbox:
                    self.waiting.clear()
                    await self.waiting.wait()
                    continue
                key, message = self.outbox.popitem(last=False)
                if isinstance(key, int):
                    self.replies_queued -= 1
                self.sending_since = loop.time()
                await self.socket.send_text(message)  # waits while the socket's buffers are full
                self.sending_since = None
                WS_SENT.inc()
        except asyncio.CancelledError:
            if not self.dropped:
                raise  # the client left, or the server stops
        raise ClientTooSlow


async def watch_sends(clients: set[Subscriber], health: TaskHealth, every: float = WATCH_INTERVAL) -> None:
    """Drop every client whose socket has taken nothing for its send timeout, looking at all of them once a
    second: a timer around each send cost ~11 µs of the ~45 µs a send costs, and a fan-out makes thousands of sends."""
    loop = asyncio.get_running_loop()
    health.serving()
    while True:
        await asyncio.sleep(every)
        now = loop.time()
        for client in [client for client in clients if client.stalled(now)]:
            client.drop()
