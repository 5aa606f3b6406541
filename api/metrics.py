"""GET /metrics: the API's own families plus cluster-wide gauges read at scrape time from shared state.

Every replica reports the same cluster figures (jobs by status, dead letters, the data-plane backlog), so
any one scrape tells the whole story. With SPINBOT_METRICS_PUBLIC, Prometheus may scrape without a key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ResponseError

from api.auth import require_key
from api.deps import Backend, BackendDep
from api.openapi import error_response
from core.metrics import (
    DATA_BACKLOG,
    DATA_CONSUMERS,
    DATA_OLDEST_PENDING,
    DATA_PENDING,
    DEAD_LETTER_BACKLOG,
    EVENTS_BACKLOG,
    JOBS_BY_STATUS,
    role_registry,
)
from workflows.status import JobStatus

router = APIRouter(tags=["ops"])
REGISTRY = role_registry("api")


async def refresh_shared_gauges(backend: Backend) -> None:
    """Jobs by status, dead letters waiting, the data plane's backlog and the events waiting for PostgreSQL: what no
    single process counts."""
    bridge = backend.contracts.bridge
    counts = await backend.store.count_by_status()
    for status in {*JobStatus, *counts}:  # a status that emptied must read 0, not its last count
        JOBS_BY_STATUS.labels(status=status).set(counts.get(status, 0))
    streams = bridge.dead_letter_streams
    pipe = backend.redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
    pipe.xlen(bridge.data_stream)
    pipe.xlen(bridge.events_backlog)  # grows while PostgreSQL is away, by every message the relays hear meanwhile
    *dead, backlog, events = await pipe.execute()
    for stream, length in zip(streams, dead, strict=True):
        DEAD_LETTER_BACKLOG.labels(stream=stream).set(length)
    DATA_BACKLOG.set(backlog)
    EVENTS_BACKLOG.set(events)
    group = next((g for g in await _groups(backend) if _text(g.get("name")) == bridge.workers_group), None)
    DATA_CONSUMERS.set(int(group.get("consumers", 0)) if group else 0)
    DATA_PENDING.set(int(group.get("pending", 0)) if group else 0)
    oldest = 0.0
    if group and int(group.get("pending", 0)):
        first = await backend.redis.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 1)
        oldest = int(first[0]["time_since_delivered"]) / 1000 if first else 0.0
    DATA_OLDEST_PENDING.set(oldest)


async def _groups(backend: Backend) -> list[dict]:
    try:
        return await backend.redis.xinfo_groups(backend.contracts.bridge.data_stream)
    except ResponseError as exc:  # no stream yet: nothing is waiting
        if "no such key" in str(exc).lower():
            return []
        raise


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _maybe_key(request: Request, backend: BackendDep) -> None:
    if not backend.settings.metrics_public:
        await require_key(request, backend.settings)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        401: error_response("Missing or invalid API key (unless SPINBOT_METRICS_PUBLIC is set)"),
    },
)
async def metrics(request: Request, backend: BackendDep) -> Response:
    await _maybe_key(request, backend)
    await refresh_shared_gauges(backend)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
