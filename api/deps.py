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


def get_backend(connection: HTTPConnection) -> Backend:
    """Works for HTTP requests and WebSocket connections alike."""
    return connection.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]


def _store(backend: BackendDep) -> Store:
    return backend.store


def _redis(backend: BackendDep) -> aioredis.Redis:
    return backend.redis


def _temporal(backend: BackendDep) -> Client:
    return backend.temporal


def _hub(backend: BackendDep) -> Hub:
    return backend.hub


def _storage(backend: BackendDep) -> ObjectStore:
    return backend.storage


def _settings(backend: BackendDep) -> Settings:
    return backend.settings


StoreDep = Annotated[Store, Depends(_store)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
TemporalDep = Annotated[Client, Depends(_temporal)]
HubDep = Annotated[Hub, Depends(_hub)]
StorageDep = Annotated[ObjectStore, Depends(_storage)]
SettingsDep = Annotated[Settings, Depends(_settings)]
