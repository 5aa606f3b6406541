"""The whole control plane in the test's event loop, on the session's real services."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis
import uvicorn
from temporalio.client import Client

from api.app import create_app
from core.contracts import contracts
from core.redis import redis_client
from core.settings import Settings
from handoff.dataplane import DataPlaneWorker
from handoff.service import run_relay
from handoff.simulator import Simulator
from spinbot.http_server import server_config
from spinbot.ports import free_port
from spinbot.worker import running_workers


@dataclass
class Stack:
    settings: Settings
    temporal: Client
    redis: aioredis.Redis
    api: httpx.AsyncClient
    api_url: str
    dataplane_options: dict = field(default_factory=dict)
    dataplane_task: asyncio.Task | None = None

    def start_dataplane(self, sim_seconds: float = 0.0, **options) -> None:
        spec = contracts()
        worker = DataPlaneWorker(
            self.redis,
            spec.bridge,
            spec.python_capabilities,
            Simulator(seconds=sim_seconds),
            consumer="test-dataplane",
            **options,
        )
        self.dataplane_task = asyncio.create_task(worker.run())

    async def stop_dataplane(self) -> None:
        if self.dataplane_task:
            # Forgotten first: a worker that died raises its error here once, not in every later test.
            task, self.dataplane_task = self.dataplane_task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def dataplane(self, **options):
        """Run the reference worker with other options for one test, then restore the default one."""
        await self.stop_dataplane()
        self.start_dataplane(**options)
        try:
            yield
        finally:
            await self.stop_dataplane()
            self.start_dataplane()

    @contextlib.asynccontextmanager
    async def no_dataplane(self):
        """No data-plane worker for one test: the test plays the data plane itself, or nobody does."""
        await self.stop_dataplane()
        try:
            yield
        finally:
            self.start_dataplane()


@contextlib.asynccontextmanager
async def api_replica(settings: Settings, temporal: Client, ping_seconds: float = 20):
    """One more API process-equivalent (its own app, hub and pub/sub subscription) on a free port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        server_config(  # the API's own server settings, as `spinbot api` serves it
            create_app(settings, temporal),
            settings,
            "127.0.0.1",
            port,
            log_level="warning",
            lifespan="on",
            ws_ping_interval=ping_seconds,
            ws_ping_timeout=ping_seconds,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # start-up failed: raise why
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, temporal: Client):
    redis = redis_client(settings.redis_url)  # as every role opens its own: the reference worker below uses it
    relay_ready = asyncio.Event()
    async with running_workers(temporal, settings), api_replica(settings, temporal) as url:
        relay = asyncio.create_task(run_relay(settings, temporal, consumer="test-relay", ready=relay_ready))
        async with asyncio.timeout(10):
            await relay_ready.wait()
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            stack = Stack(settings, temporal, redis, api, url)
            stack.start_dataplane()
            try:
                yield stack
            finally:
                await stack.stop_dataplane()
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
                await redis.aclose()
