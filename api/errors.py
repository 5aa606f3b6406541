"""Every error leaves as {"error": "<message>"} with a 4xx/5xx code; never a stack trace."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

from core.outages import down_dependency

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2  # what a 503 tells clients: a restarting dependency is usually back by then
# Errors that may mean a dependency is down; handled where routes raise them, so each is answered once.
MAYBE_OUTAGES: tuple[type[Exception], ...] = (
    RedisError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RPCError,
    OSError,
)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str) -> JSONResponse:
    """The error body; a 503 also says when to try again."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def unavailable(dependency: str) -> ApiError:
    return ApiError(503, f"{dependency} unavailable; try again shortly")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if exc.status >= 500:  # every 5xx leaves a line saying why
            log.warning("%s %s answered %d: %s", request.method, request.url.path, exc.status, exc.message)
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    async def _maybe_outage(request: Request, exc: Exception):
        dependency = down_dependency(exc)
        if dependency is None:
            return await _unexpected(request, exc)
        log.warning(
            "%s %s: %s unavailable (%s: %s)", request.method, request.url.path, dependency, type(exc).__name__, exc
        )
        return error(503, unavailable(dependency).message)

    for kind in MAYBE_OUTAGES:
        app.add_exception_handler(kind, _maybe_outage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal error")
