"""What the reference data-plane worker publishes on a job's channels: events, and its cumulative progress."""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.contracts import Bridge
from core.redis import TRANSIENT
from core.timestamps import now_ms
from workflows.graph import clamp_progress

log = logging.getLogger(__name__)


async def publish_event(redis: aioredis.Redis, bridge: Bridge, kind: str, job_id: str, payload: dict) -> None:
    """Publish on channel:<kind>:<jobId>; best effort, since pub/sub keeps nothing for absent listeners either."""
    await publish_events(redis, bridge, kind, job_id, [payload])


async def publish_events(redis: aioredis.Redis, bridge: Bridge, kind: str, job_id: str, payloads: list[dict]) -> None:
    """Publish each payload on channel:<kind>:<jobId>, in order, in one round trip (best effort, as above)."""
    if not payloads:
        return
    channel, created = bridge.channel(kind, job_id), now_ms()
    pipe = redis.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel, json.dumps({"jobId": job_id, **payload, "created": created}))
    try:
        await pipe.execute()
    except TRANSIENT as exc:
        log.warning("could not publish %s for job %s (%s)", kind, job_id, exc)


class JobProgress:
    """One job's cumulative progress on channel:progress:<jobId>, never published moving backwards (a round trip
    that redis-py retries after a lost connection may publish its values again)."""

    def __init__(self, redis: aioredis.Redis, bridge: Bridge, job_id: str):
        self.redis, self.bridge, self.job_id = redis, bridge, job_id
        self.published = 0.0

    async def base(self, fallback: float) -> float:
        """Progress so far from job:<id>:progress, as the existing worker reads it; `fallback` if unset."""
        try:
            raw = await self.redis.get(self.bridge.progress_key(self.job_id))
            return clamp_progress(float(raw)) if raw is not None else fallback
        except (RedisError, OSError, ValueError):
            return fallback

    async def report(self, *values: float) -> None:
        """Publish each value that rises above the last one, in order, in one round trip."""
        rising = []
        for value in map(clamp_progress, values):
            if value > self.published:
                self.published = value
                rising.append({"progress": round(value, 6)})
        await publish_events(self.redis, self.bridge, "progress", self.job_id, rising)
