"""The clients one API process shares across requests, and their dependency aliases."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from temporalio.client import Client

from spinbot.contracts import Contracts
from spinbot.settings import Settings
from spinbot.store import Store
from workflows.inputs import ServiceRuntime


@dataclass
class Backend:
    settings: Settings
    contracts: Contracts
    redis: aioredis.Redis
    store: Store
    temporal: Client
    runtimes: dict[str, ServiceRuntime]
    extras: dict = field(default_factory=dict)


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]
