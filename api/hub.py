"""The WebSocket hub: pub/sub events pushed to the clients subscribed to each job, as they happen.

Each API replica serves only its own clients, and subscribes to the status and progress channels of only the
jobs they follow (`core.pubsub.Following`). A client gets an outbox and a sender task of its own
(api/subscriber.py), so a slow or dead client is disconnected instead of delaying anyone else. Statuses reach
clients only from the control plane (`source: control-plane`), at once; progress at most
`progress_pushes_per_second` times a second per job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.subscriber import Subscriber
from core.contracts import Bridge, ContractError
from core.failures import UNKNOWN_CODE, job_error_from_json
from core.messages import channel_job, parse_event
from core.pubsub import Following
from core.supervise import TaskHealth
from core.wire import WireLimits
from workflows.graph import clamp_progress
from workflows.names import CONTROL_SOURCE
from workflows.status import JobStatus

log = logging.getLogger(__name__)

HUB_LISTENER = "hub-listener"  # the supervised task that feeds the hub from pub/sub
CATCH_UP_CHUNK = 500  # jobs whose keys one round trip reads when catching up after a resubscribe


@dataclass
class JobView:
    """What clients have been told about a job; progress shown never moves backwards."""

    status: str | None = None
    progress: float = 0.0
    error: dict | None = None
    pushed_at: float = -math.inf  # the event loop's time of the last push
    due: asyncio.TimerHandle | None = None  # the push that will carry progress held back meanwhile

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


class Hub:
    def __init__(
        self,
        bridge: Bridge,
        redis: aioredis.Redis | None = None,
        max_bytes: int = WireLimits.max_bytes,
        progress_pushes_per_second: float = 10,
        redis_url: str | None = None,
    ):
        self.bridge, self.max_bytes = bridge, max_bytes
        # A progress bar needs no more frames than this: progress between them is folded into the next push, which
        # keeps a burst of ticks from costing every client a send each. 0: every rise is pushed. Statuses go at once.
        self.progress_interval = 1 / progress_pushes_per_second if progress_pushes_per_second else 0.0
        self.redis = redis  # to read why a job failed when its `failed` status does not say, and to catch up
        self.clients: set[Subscriber] = set()  # every connected client, followed jobs or not
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.views: dict[str, JobView] = {}
        # The channels of followed jobs, on one connection; its listener is a supervised task (HUB_LISTENER).
        self.following = Following(redis_url, self.on_message, self.catch_up) if redis_url else None

    def channels(self, job_id: str) -> tuple[str, str]:
        return self.bridge.channel("status", job_id), self.bridge.channel("progress", job_id)

    async def listen(self, health: TaskHealth | None = None) -> None:
        """Hear the followed jobs' messages until cancelled (the HUB_LISTENER task)."""
        if self.following is None:
            raise RuntimeError("a hub made without a Redis URL hears nothing")
        await self.following.run(health)

    async def follow(self, job_id: str) -> None:
        """Returns once this replica hears the job's messages: a state read after it misses nothing published."""
        if self.following is not None:
            await self.following.follow(*self.channels(job_id))

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
                if self.following is not None:
                    self.following.drop(*self.channels(job_id))
                view = self.views.pop(job_id, None)
                if view is not None and view.due is not None:
                    view.due.cancel()

    def join(self, client: Subscriber) -> None:
        self.clients.add(client)

    def leave(self, client: Subscriber) -> None:
        self.clients.discard(client)
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
            if event.status == view.status and event.error in (None, view.error):
                return  # a status the clients know already: not news
            await self._new_status(event.job_id, event.status, event.error)
        elif event.progress is not None and event.progress > view.progress:
            view.progress = event.progress
            if view.status is not None:  # else the initial state is still being read; it will carry this progress
                self._push_progress(event.job_id, view)
        # else: progress that would move backwards (or repeat) is not news

    async def _new_status(self, job_id: str, status: str, error: dict | None) -> None:
        """Tell a job's watchers of its status. A failure's error is read before the view is touched, so nothing
        pushed meanwhile (a progress push falling due, a new subscriber's current state) says `failed` without it."""
        if status != JobStatus.FAILED:
            error = None
        elif error is None:
            error = await self._failure(job_id)
        view = self.views.get(job_id)  # after the wait: its watchers may all have left, and new ones begun a view
        if view is None or job_id not in self.subscribers or (status == view.status and error == view.error):
            return
        view.status, view.error = status, error
        self._push(job_id, view)

    def _push_progress(self, job_id: str, view: JobView) -> None:
        """Push now if the last push is old enough, else once it is (a push already due will carry this)."""
        if view.due is not None:
            return
        wait = view.pushed_at + self.progress_interval - asyncio.get_running_loop().time()
        if wait <= 0:
            self._push(job_id, view)
        else:
            view.due = asyncio.get_running_loop().call_later(wait, self._push, job_id, view)

    def _push(self, job_id: str, view: JobView) -> None:
        if view.due is not None:
            view.due.cancel()  # this push carries the progress it was to carry
            view.due = None
        view.pushed_at = asyncio.get_running_loop().time()
        message = json.dumps(view.update(job_id))
        for client in self.subscribers.get(job_id, ()):
            client.offer_update(job_id, message)

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
        if job_id not in self.subscribers:
            return  # unsubscribed meanwhile
        view = self.views.setdefault(job_id, JobView())
        if view.status is None and status:
            # Its current state is still being read, perhaps from before this replica heard the job again: what is
            # stored now is at least as new, and the state sent after `subscribed` keeps it (`current`).
            error = await self._failure(job_id) if status == JobStatus.FAILED else None
            view = self.views.get(job_id) or JobView()  # after the wait: its watchers may all have left
            if view.status is None and job_id in self.subscribers:
                view.status, view.error = status, error
        stored = clamp_progress(progress) if progress is not None else view.progress
        rose = stored > view.progress
        view.progress = max(view.progress, stored)
        if view.status is None:
            return  # the state sent after `subscribed` carries the progress
        if status and status != view.status:
            await self._new_status(job_id, status, None)  # its push carries the progress too
        elif rose:
            self._push(job_id, view)
