"""Pure ASGI middleware (cheap on the hot path): request metrics and request body limits."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException

from core.metrics import HTTP_REQUESTS, HTTP_SECONDS


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (scope["method"], route, str(status["code"]))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_SECONDS.labels(*labels).observe(time.perf_counter() - started)


class BodyLimit:
    """Refuses request bodies over a limit with 413 {"error"}, by Content-Length or as they stream in."""

    def __init__(self, app, default_limit: int, limits: dict[str, int] | None = None):
        self.app = app
        self.default_limit = default_limit
        self.limits = limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.default_limit)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _refuse(send, limit)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, limit)


class BodyTooLarge(HTTPException):
    """An HTTPException, so that body parsers re-raise it as a 413 rather than wrapping it."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body too large (limit {limit} bytes)"


async def _refuse(send, limit: int) -> None:
    body = json.dumps({"error": _too_large(limit)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
