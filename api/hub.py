"""The WebSocket hub: pub/sub events pushed to the clients subscribed to each job, as they happen.

Each API replica subscribes to the status and progress channels itself and serves only its own
clients. A client gets a bounded queue and a sender task of its own, so a slow or dead client is
disconnected instead of delaying anyone else. Statuses reach clients only from the control plane
(`source: control-plane`); the data plane's progress is forwarded as it comes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fastapi import WebSocket
from redis.exceptions import RedisError

from core.contracts import Bridge, ContractError
from core.failures import UNKNOWN_CODE, job_error_from_json
from core.messages import channel_job, parse_event
from core.metrics import WS_ERRORS, WS_SENT
from core.wire import WireLimits
from workflows.graph import clamp_progress
from workflows.names import CONTROL_SOURCE
from workflows.status import JobStatus

log = logging.getLogger(__name__)

HUB_LISTENER = "hub-listener"  # the supervised task that feeds the hub from pub/sub
QUEUE_LIMIT = 256
CATCH_UP_CHUNK = 500  # jobs whose keys one round trip reads when catching up after a resubscribe
SEND_TIMEOUT = 10.0
SLOW_CLIENT_CLOSE = 1013  # "try again later": it fell too far behind


@dataclass
class JobView:
    """What clients have been told about a job; progress shown never moves backwards."""

    status: str | None = None
    progress: float = 0.0
    error: dict | None = None

    def update(self, job_id: str) -> dict:
        update: dict[str, object] = {
            "type": "update",
            "jobId": job_id,
            "status": self.status,
            "progress": self.progress,
        }
        if self.status == JobStatus.FAILED:
            update["error"] = self.error or {"nodeId": None, "message": "failed", "code": UNKNOWN_CODE}
        return update


@dataclass(eq=False)
class Subscriber:
    socket: WebSocket
    jobs: set[str] = field(default_factory=set)
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: bool = False  # fell too far behind: its sender is cancelled and the socket closed with 1013
    sender: asyncio.Task | None = None

    def start_sending(self) -> asyncio.Task:
        self.sender = asyncio.create_task(self.send_forever())
        return self.sender

    def offer(self, message: str) -> bool:
        """Queue a message without waiting; False when the client has fallen too far behind."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            if self.sender is not None:
                self.sender.cancel()  # ends the route's wait: one task fewer per socket than watching a flag
            return False

    async def send_forever(self) -> None:
        while True:
            message = await self.queue.get()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that lands as the send ends.
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.socket.send_text(message)
            WS_SENT.inc()


class Hub:
    def __init__(self, bridge: Bridge, redis: aioredis.Redis | None = None, max_bytes: int = WireLimits.max_bytes):
        self.bridge, self.max_bytes = bridge, max_bytes
        self.redis = redis  # to read why a job failed when its `failed` status does not say, and to catch up
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.views: dict[str, JobView] = {}

    @property
    def patterns(self) -> list[str]:
        return [self.bridge.status_channel + "*", self.bridge.progress_channel + "*"]

    def subscribe(self, client: Subscriber, job_id: str) -> None:
        client.jobs.add(job_id)
        self.subscribers.setdefault(job_id, set()).add(client)

    def unsubscribe(self, client: Subscriber, job_id: str) -> None:
        client.jobs.discard(job_id)
        watchers = self.subscribers.get(job_id)
        if watchers is not None:
            watchers.discard(client)
            if not watchers:
                del self.subscribers[job_id]
                self.views.pop(job_id, None)

    def leave(self, client: Subscriber) -> None:
        for job_id in list(client.jobs):
            self.unsubscribe(client, job_id)

    def current(self, job_id: str, status: str | None, progress: float, error: dict | None = None) -> str:
        """The state to send right after `subscribed`, folded with anything pushed meanwhile."""
        view = self.views.setdefault(job_id, JobView())
        if view.status is None:
            view.status, view.error = status, error
        view.progress = max(view.progress, progress)
        return json.dumps(view.update(job_id))

    async def _failure(self, job_id: str) -> dict | None:
        """Why a job failed, from the graph last written to job:<id> (by the workflow or the data plane)."""
        if self.redis is None:
            return None
        try:
            return job_error_from_json(await self.redis.hget(self.bridge.job_key(job_id), "graph"))
        except (RedisError, UnicodeDecodeError) as exc:  # down, or bytes the data plane wrote are not text
            log.warning("cannot read why job %s failed: %s", job_id, exc)
            return None

    async def on_message(self, channel: bytes | str, raw: bytes | str) -> None:
        """One pub/sub message as read (bytes); garbage is ignored here (the relay dead-letters it)."""
        try:
            if channel_job(self.bridge, channel)[1] not in self.subscribers:
                return  # nobody here follows that job: its payload need not even be parsed
            event = parse_event(self.bridge, channel, raw, self.max_bytes)
        except ContractError:
            return
        watchers = self.subscribers.get(event.job_id)
        if not watchers:
            return
        view = self.views.setdefault(event.job_id, JobView())
        if event.status and event.source != CONTROL_SOURCE:
            return  # the workflow alone decides a job's fate: a data plane's `completed` may end only one segment
        if event.status:
            view.status = event.status
            view.error = None
            if event.status == JobStatus.FAILED:
                view.error = event.error or await self._failure(event.job_id)
        elif event.progress is not None and event.progress > view.progress:
            view.progress = event.progress
            if view.status is None:
                return  # the initial state is still being read; it will carry this progress
        else:
            return  # progress that would move backwards (or repeat) is not news
        self._push(event.job_id, view)
        # Let senders drain between messages: a burst read in one go must not fill a reading client's queue.
        await asyncio.sleep(0)

    def _push(self, job_id: str, view: JobView) -> None:
        message = json.dumps(view.update(job_id))
        for client in list(self.subscribers.get(job_id, ())):
            if not client.offer(message):
                WS_ERRORS.labels(kind="slow_client").inc()
                self.leave(client)

    async def catch_up(self) -> None:
        """After (re)subscribing: push what changed while no message could arrive (a Redis restart, say)."""
        if self.redis is None:
            return
        jobs = list(self.subscribers)
        for start in range(0, len(jobs), CATCH_UP_CHUNK):
            chunk = jobs[start : start + CATCH_UP_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in chunk:
                pipe.mget(self.bridge.status_key(job_id), self.bridge.progress_key(job_id))
            for job_id, (status, progress) in zip(chunk, await pipe.execute(), strict=True):
                await self._catch_up_job(job_id, status, progress)

    async def _catch_up_job(self, job_id: str, status: str | None, progress: str | None) -> None:
        view = self.views.get(job_id)
        if view is None or view.status is None or job_id not in self.subscribers:
            return  # unsubscribed meanwhile, or its initial state is still being read
        stored = clamp_progress(progress) if progress is not None else view.progress
        if (status is None or status == view.status) and stored <= view.progress:
            return
        if status and status != view.status:
            view.status = status
            view.error = await self._failure(job_id) if status == JobStatus.FAILED else None
        view.progress = max(view.progress, stored)
        self._push(job_id, view)
