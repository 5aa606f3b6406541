"""The production shape, as processes: every role twice on external services, one replica of each killed mid-run.

Temporal is a plain dev server started with no spinbot flags (standing in for a cluster: the roles register
their search attributes themselves), Redis, PostgreSQL and the S3 server stand apart, and every role runs as
its own `python -m spinbot ...` process: two APIs, two workflow workers, two activity workers per task queue
(LLM calls on their own queue), two relays, two data-plane workers. Config comes from SPINBOT_CONFIG_DIR.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.cluster import SADTALKER, all_complete, finished, production, ready, stopped_holding, until

pytestmark = pytest.mark.timeout(180)

JOBS = 12  # submitted before the data plane's kill; more follow until it dies holding an entry
KILL_AFTER = 6  # jobs submitted before one replica of each role is killed


class Watcher:
    """One WebSocket client of one API, subscribed to jobs as they are submitted (through any API)."""

    def __init__(self, connection):
        self.connection = connection
        self.statuses: dict[str, list[str]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            if message.get("type") == "update":
                self.statuses.setdefault(message["jobId"], []).append(message["status"])

    async def subscribe(self, job_id: str) -> None:
        await self.connection.send(json.dumps({"action": "subscribe", "jobId": job_id}))

    def saw_completed(self, job_id: str) -> bool:
        return "completed" in self.statuses.get(job_id, [])


async def _submit(api: str, prompt: str) -> str:
    async with httpx.AsyncClient(timeout=15) as http:
        reply = await http.post(f"{api}/api/jobs", json={**SADTALKER, "params": {"script": {"prompt": prompt}}})
    assert reply.status_code == 200, reply.text
    return reply.json()["jobId"]


async def test_two_of_every_role_one_of_each_killed_mid_run_every_job_completes(
    tmp_path, database_url, s3_endpoint, llm
):
    started = time.monotonic()
    async with production(tmp_path, database_url, s3_endpoint, llm.url) as deployment:
        await ready(deployment)
        ready_seconds = time.monotonic() - started
        llm.delay = 1.0  # LLM calls in flight when the kills land: one LLM worker dies holding some
        api_one, api_two = deployment.api_url(0), deployment.api_url(1)
        submitted: list[tuple[str, str]] = []  # (job id, API it went through)
        async with ws_connect(api_two.replace("http://", "ws://") + "/ws", proxy=None, open_timeout=10) as socket:
            watcher = Watcher(socket)
            for i in range(KILL_AFTER):
                api = (api_one, api_two)[i % 2]
                job_id = await _submit(api, f"production job {i}")
                submitted.append((job_id, api))
                await watcher.subscribe(job_id)
                await asyncio.sleep(0.1)

            # Mid-run: jobs in flight on every role. One replica of each role (the data plane later) dies hard.
            in_flight = [job_id for job_id, _ in submitted if not await finished(deployment.temporal, job_id)]
            for kind in deployment.roles:
                if kind != "dataplane":
                    deployment.kill(kind)
            killed_at = time.monotonic()
            llm.delay = 0.3
            for i in range(KILL_AFTER, JOBS):
                job_id = await _submit(api_two, f"production job {i}")  # the balancer now sends all to the survivor
                submitted.append((job_id, api_two))
                await watcher.subscribe(job_id)
                await asyncio.sleep(0.1)
            await all_complete(deployment, [job_id for job_id, _ in submitted])
            recovered, first_wave = time.monotonic() - killed_at, len(submitted)

            # The data plane dies holding an entry; the live replica takes it over once the dead one's heartbeat
            # has run out (dataplane.livenessTtlMs, short in this deployment's config). Jobs keep coming meanwhile.
            stop_feeding = asyncio.Event()

            async def feed() -> None:
                for i in range(len(submitted), len(submitted) + 20):
                    if stop_feeding.is_set():
                        return
                    job_id = await _submit(api_two, f"production job {i}")
                    submitted.append((job_id, api_two))
                    await watcher.subscribe(job_id)
                    await asyncio.sleep(0.25)

            feeding = asyncio.create_task(feed())
            held = await stopped_holding(deployment, "dataplane", 0)
            deployment.kill("dataplane")
            dataplane_killed_at = time.monotonic()
            stop_feeding.set()
            await feeding
            await all_complete(deployment, [job_id for job_id, _ in submitted])
            taken_over = time.monotonic() - dataplane_killed_at

            async with httpx.AsyncClient(base_url=api_two, timeout=10) as http:
                for job_id, _ in submitted:
                    status = (await http.get(f"/api/status/{job_id}")).json()
                    assert (status["status"], status["progress"]) == ("completed", 1.0), status
            through_one = [job_id for job_id, api in submitted if api == api_one]
            await until(
                lambda: _true(all(watcher.saw_completed(job_id) for job_id, _ in submitted)),
                "the WebSocket client on API 2 to see every job complete",
                timeout=20,
            )
            watcher.reader.cancel()
        elapsed = time.monotonic() - started
        replicas = {kind: len(roles) for kind, roles in deployment.roles.items()}
        print(
            f"\nproduction shape: {len(submitted)} jobs ({len(through_one)} through API 1, the rest through API 2), "
            f"replicas {replicas}, killed -9: {', '.join(deployment.killed)} "
            f"({len(in_flight)} jobs in flight at the kill; the first {first_wave} jobs all completed "
            f"{recovered:.1f}s after it; the data-plane replica died holding {held} entry(ies), every job done "
            f"{taken_over:.1f}s after), all {len(submitted)} completed, "
            f"WebSocket on API 2 saw all {len(through_one)} jobs of API 1 complete; "
            f"ready in {ready_seconds:.1f}s, {elapsed:.1f}s in all"
        )
        assert len(deployment.killed) == len(deployment.roles)


async def _true(value: bool) -> bool:
    return value
