"""`GET /ready`: can this replica serve? Redis, PostgreSQL, Temporal and every background task, each checked briefly.

`/health` stays liveness (the process answers); `/ready` is what load balancers and compose healthchecks ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import BackendDep
from api.errors import RETRY_AFTER_SECONDS
from api.models import ErrorBody, Readiness
from core.outages import POSTGRES, REDIS, TEMPORAL

router = APIRouter(tags=["ops"])

CHECK_TIMEOUT = 1.0  # seconds per dependency; the checks run concurrently


async def _check(probe: Awaitable[object]) -> dict:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            answer = await probe
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT:g}s"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if answer is False:
        return {"ok": False, "error": "reported not serving"}
    return {"ok": True}


@router.get("/ready", response_model=Readiness, responses={503: {"model": ErrorBody}})
async def ready(backend: BackendDep):
    """200 when every dependency answers and every background task serves, else 503 naming what is not."""
    timeout = timedelta(seconds=CHECK_TIMEOUT)
    probes = {
        REDIS: backend.redis.ping(),
        POSTGRES: backend.store.pool.fetchval("SELECT 1", timeout=CHECK_TIMEOUT),
        TEMPORAL: backend.temporal.service_client.check_health(timeout=timeout),
    }
    results = await asyncio.gather(*(_check(probe) for probe in probes.values()))
    checks: dict[str, dict] = dict(zip(probes, results, strict=True))
    checks.update(backend.tasks.report())
    down = [name for name, check in checks.items() if not check["ok"]]
    if down:
        return JSONResponse(
            {"error": f"not ready: {', '.join(down)}", "checks": checks},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return {"status": "ready", "checks": checks}
