"""What one API process shares across requests, and a typed dependency alias per resource for the routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import redis.asyncio as aioredis
from fastapi import Depends
from starlette.requests import HTTPConnection
from temporalio.client import Client

from api.hub import Hub
from core.contracts import Contracts
from core.settings import Settings
from core.storage import ObjectStore
from core.store import Store
from core.supervise import Supervisor
from workflows.inputs import ServiceRuntime

if TYPE_CHECKING:
    from api.routes_capabilities import CapabilitiesCache


@dataclass
class Backend:
    """The clients and state of one API process, opened once in the app's lifespan."""

    settings: Settings
    contracts: Contracts
    redis: aioredis.Redis
    store: Store
    temporal: Client
    runtimes: dict[str, ServiceRuntime]
    hub: Hub
    storage: ObjectStore
    tasks: Supervisor = field(default_factory=Supervisor)  # background tasks, restarted when they die
    capabilities: CapabilitiesCache | None = field(default=None)


def backend_of(connection: HTTPConnection) -> Backend:
    """Works for HTTP requests and WebSocket connections alike."""
    return connection.app.state.backend


# Every dependency here is `async def` although none awaits: FastAPI runs a plain `def` dependency in a worker
# thread, a hop through the thread pool for each one on every request (3 per request made GET /api/status ~10 ms
# under load; tests/test_api_dependencies.py keeps it so).
async def get_backend(connection: HTTPConnection) -> Backend:
    return backend_of(connection)


BackendDep = Annotated[Backend, Depends(get_backend)]


async def _store(backend: BackendDep) -> Store:
    return backend.store


async def _redis(backend: BackendDep) -> aioredis.Redis:
    return backend.redis


async def _temporal(backend: BackendDep) -> Client:
    return backend.temporal


async def _hub(backend: BackendDep) -> Hub:
    return backend.hub


async def _storage(backend: BackendDep) -> ObjectStore:
    return backend.storage


async def _settings(backend: BackendDep) -> Settings:
    return backend.settings


StoreDep = Annotated[Store, Depends(_store)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
TemporalDep = Annotated[Client, Depends(_temporal)]
HubDep = Annotated[Hub, Depends(_hub)]
StorageDep = Annotated[ObjectStore, Depends(_storage)]
SettingsDep = Annotated[Settings, Depends(_settings)]
