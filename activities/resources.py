"""Clients the activities share within one worker process, created once at start-up."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis

from core.contracts import Contracts
from core.settings import Settings
from core.storage import ObjectStore
from core.timestamps import now_ms


@dataclass
class Resources:
    settings: Settings
    contracts: Contracts
    redis: aioredis.Redis
    http: httpx.AsyncClient
    storage: ObjectStore | None = None  # built lazily by the artifacts service

    async def publish_progress(self, job_id: str, progress: float) -> None:
        """Publish job progress on channel:progress:<jobId> (the relay keeps the key and history)."""
        bridge = self.contracts.bridge
        payload = {"jobId": job_id, "progress": round(progress, 6), "created": now_ms()}
        await self.redis.publish(bridge.channel("progress", job_id), json.dumps(payload))
