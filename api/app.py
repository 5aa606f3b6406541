"""The FastAPI app: clients opened once in the lifespan, routers aggregated here."""

from __future__ import annotations

import contextlib
import logging

from fastapi import Depends, FastAPI
from temporalio.client import Client

from api.auth import require_key
from api.cors import JsonErrorCORSMiddleware
from api.deps import Backend
from api.docs import install_docs
from api.errors import install_error_handlers
from api.hub import HUB_LISTENER, Hub
from api.metrics import router as metrics_router
from api.middleware import BodyLimit, RequestMetrics
from api.models import Health
from api.openapi import error_response, install_openapi
from api.readiness import router as readiness_router
from api.routes_artifacts import download_router
from api.routes_artifacts import router as artifacts_router
from api.routes_capabilities import router as capabilities_router
from api.routes_catalog import router as catalog_router
from api.routes_control import router as control_router
from api.routes_jobs import router as jobs_router
from api.routes_uploads import router as uploads_router
from api.routes_ws import WebSocketEndpoint
from api.subscriber import SEND_WATCH, watch_sends
from core.contracts import contracts, service_runtimes
from core.redis import redis_client
from core.settings import Settings
from core.storage import object_store
from core.store import Store, connect_pool
from core.supervise import Supervisor, TaskHealth
from core.temporal import connect

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 1 << 20  # multipart framing and the `data` part, on top of two files
TASKS_START_SECONDS = 30  # how long start-up waits for the hub's subscription before serving anyway


def create_app(settings: Settings, temporal: Client | None = None) -> FastAPI:
    """The API; pass `temporal` to share a client (tests), else one is connected at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        spec = contracts()
        redis = redis_client(settings.redis_url)
        pool = await connect_pool(settings.database_url)
        client = temporal or await connect(settings.temporal_address, settings.temporal_namespace)
        hub = Hub(
            spec.bridge, redis, settings.max_entry_bytes, settings.ws_progress_pushes_per_second, settings.redis_url
        )
        tasks = Supervisor()

        async def drop_stalled_clients(health: TaskHealth) -> None:
            await watch_sends(hub.clients, health)

        tasks.start(HUB_LISTENER, hub.listen)
        tasks.start(SEND_WATCH, drop_stalled_clients)
        app.state.backend = Backend(
            settings, spec, redis, Store(pool), client, service_runtimes(spec), hub, object_store(settings), tasks
        )
        try:
            await tasks.wait_up(TASKS_START_SECONDS)
        except TimeoutError:  # keep serving what can be served; the tasks keep retrying and /ready says so
            log.warning("background tasks not serving after %ss: %s", TASKS_START_SECONDS, tasks.report())
        try:
            yield
        finally:
            await tasks.stop()
            await redis.aclose()
            await pool.close()

    app = FastAPI(
        title="MySpinBot control plane",
        version="1.0",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, with local assets
        redoc_url=None,
        description="REST + WebSocket API of the MySpinBot control plane (jobs run as Temporal workflows).",
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        default_limit=settings.max_body_bytes,
        limits={"/api/infinitetalk": 2 * settings.upload_max_bytes + UPLOAD_OVERHEAD},
    )
    app.add_middleware(
        JsonErrorCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=False,
    )
    app.add_middleware(RequestMetrics)
    app.add_middleware(WebSocketEndpoint)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health():
        return {"status": "ok"}

    for router in (jobs_router, control_router, capabilities_router, uploads_router, catalog_router, artifacts_router):
        app.include_router(
            router, dependencies=[Depends(require_key)], responses={401: error_response("Missing or invalid API key")}
        )
    app.include_router(readiness_router)
    app.include_router(metrics_router)
    app.include_router(download_router)
    install_openapi(app)
    install_docs(app)
    return app
