"""The FastAPI app: clients opened once in the lifespan, routers aggregated here."""
from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from temporalio.client import Client

from activities.registry import service_runtimes
from api.backend import Backend
from api.errors import install_error_handlers
from api.models import Health
from api.routes_jobs import router as jobs_router
from spinbot.contracts import contracts
from spinbot.settings import Settings
from spinbot.store import Store, connect_pool
from spinbot.temporal import connect


def create_app(settings: Settings, temporal: Client | None = None) -> FastAPI:
    """The API; pass `temporal` to share a client (tests), else one is connected at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        spec = contracts()
        redis = aioredis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        pool = await connect_pool(settings.database_url)
        client = temporal or await connect(settings.temporal_address, settings.temporal_namespace)
        app.state.backend = Backend(settings, spec, redis, Store(pool), client, service_runtimes(spec))
        try:
            yield
        finally:
            await redis.aclose()
            await pool.close()

    app = FastAPI(title="MySpinBot control plane", version="1.0", lifespan=lifespan)
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health():
        return {"status": "ok"}

    app.include_router(jobs_router)
    return app
