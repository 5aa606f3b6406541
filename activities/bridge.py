"""The workflow's side effects on each state change: persist, publish, and hand segments to the data plane."""

from __future__ import annotations

import asyncio
import json
import time

import redis.asyncio as aioredis
from temporalio import activity

from core import jobkeys
from core.contracts import Bridge
from core.failures import job_error
from core.metrics import JOB_SECONDS, JOBS_FINISHED
from core.redis import Entry
from core.store import Store
from core.timestamps import now_ms
from workflows.inputs import JobSnapshot
from workflows.names import SYNC_JOB
from workflows.status import JobStatus


class BridgeActivities:
    def __init__(self, redis: aioredis.Redis, store: Store, bridge: Bridge):
        self.redis = redis
        self.store = store
        self.bridge = bridge

    @activity.defn(name=SYNC_JOB)
    async def sync_job(self, snap: JobSnapshot) -> None:
        """One PostgreSQL write and one Redis round trip per state change."""
        created, _ = await asyncio.gather(
            self.store.save_snapshot(snap.job_id, snap.status, snap.progress, snap.graph), self._redis(snap)
        )
        if snap.announce_status and snap.status in jobkeys.TERMINAL:
            JOBS_FINISHED.labels(status=snap.status).inc()
            JOB_SECONDS.observe(max(0.0, time.time() - created.timestamp()))

    async def _redis(self, snap: JobSnapshot) -> None:
        bridge, job_id, created = self.bridge, snap.job_id, now_ms()
        graph_json = json.dumps(snap.graph, separators=(",", ":"))
        pipe = self.redis.pipeline(transaction=False)
        jobkeys.set_graph(pipe, bridge, job_id, graph_json, created)
        jobkeys.set_state(pipe, bridge, job_id, snap.status, snap.progress)
        if snap.push:
            entry: Entry = {"jobId": job_id, "created": created, "graph": graph_json}
            pipe.xadd(bridge.data_stream, entry, maxlen=bridge.max_length, approximate=True)
        for item in snap.data:
            pipe.publish(
                bridge.channel("data", job_id),
                json.dumps({"jobId": job_id, "data": json.dumps(item), "created": created}),
            )
        if snap.announce_progress:
            pipe.publish(
                bridge.channel("progress", job_id),
                json.dumps({"jobId": job_id, "progress": snap.progress, "created": created}),
            )
        if snap.announce_status:
            status: dict = {"jobId": job_id, "status": snap.status, "created": created}
            if snap.status == JobStatus.FAILED:
                status["error"] = job_error(snap.graph)  # clients learn why without another look-up
            pipe.publish(bridge.channel("status", job_id), json.dumps(status))
        await pipe.execute()
