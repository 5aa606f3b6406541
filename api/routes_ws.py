"""WebSocket `/ws` (PROTOCOL §6): subscribe/unsubscribe, the current state at once, then pushed updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from api.auth import key_is_valid
from api.deps import Backend, backend_of
from api.errors import ApiError
from api.jobs import job_status
from api.subscriber import SLOW_CLIENT_CLOSE, ClientTooSlow, Subscriber
from core.contracts import ContractError
from core.metrics import (
    WS_CONNECTED,
    WS_CONNECTIONS,
    WS_ERRORS,
    WS_LIFETIME,
    WS_RECEIVED,
)
from core.wire import load_json, text_of

log = logging.getLogger(__name__)

MAX_MESSAGE = 4096
MAX_SUBSCRIPTIONS = 1000
AUTH_TIMEOUT = 10.0
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
FAILED = json.dumps({"action": "response", "message": "failed"})


def _response(message: str, job_id: str) -> str:
    return json.dumps({"action": "response", "message": message, "jobId": job_id})


def _parse(text: str) -> dict | None:
    """A client message with a string `action`, or None when it is not one (deep, huge or not JSON included)."""
    if len(text) > MAX_MESSAGE:
        return None
    try:
        message = load_json(text, "message")
    except ContractError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("action"), str):
        return None
    return message


async def _authorised(socket: WebSocket, keys: list[str]) -> bool:
    """Keys off: yes. Else the key comes as ?key= / ?token=, or as a first message {"action":"auth","key"}."""
    if not keys or key_is_valid(socket.query_params.get("key") or socket.query_params.get("token"), keys):
        return True
    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            frame = await socket.receive()
    except TimeoutError:
        return False
    first = _parse(frame.get("text") or "")
    if first and first["action"] == "auth" and key_is_valid(str(first.get("key", "")), keys):
        await socket.send_text(json.dumps({"action": "response", "message": "authenticated"}))
        return True
    return False


async def _initial_state(backend: Backend, job_id: str) -> tuple[str, float, dict | None]:
    try:
        state = await job_status(backend, job_id)
    except ApiError as exc:
        if exc.status != 404:
            raise  # an outage is no answer: the socket is closed with 1011 and the client reconnects
        return "not_found", 0.0, None
    return state["status"], state["progress"], state.get("error")


async def websocket(socket: WebSocket):
    backend = backend_of(socket)
    hub = backend.hub
    await socket.accept()
    if not await _authorised(socket, backend.settings.api_keys):
        await socket.close(code=POLICY_VIOLATION, reason="missing or invalid API key")
        return
    client = Subscriber(socket, backend.settings.ws_send_timeout_seconds)
    hub.join(client)
    WS_CONNECTIONS.inc()
    WS_CONNECTED.inc()
    started = time.monotonic()
    try:
        serving, sending = await _serve(backend, client)
    finally:
        hub.leave(client)
        WS_CONNECTED.dec()
        WS_LIFETIME.observe(time.monotonic() - started)
    await _close(socket, serving, sending)


async def _serve(backend: Backend, client: Subscriber) -> tuple[Exception | None, Exception | None]:
    """Read the client's messages in this task while another sends its outbox, until either ends; what each raised.

    Receiving here rather than in a task of its own spares every socket a task and its frames for as long as it
    lives."""
    try:
        async with asyncio.TaskGroup() as tasks:
            sender = tasks.create_task(client.send_forever())
            await _receive_forever(backend, client)
            sender.cancel()  # the client left
    except ExceptionGroup as group:  # the first to fail has cancelled the other
        sending = _failure(sender)
        return next((exc for exc in group.exceptions if exc is not sending), None), sending
    return None, None


def _failure(task: asyncio.Task) -> Exception | None:
    if not task.done() or task.cancelled():
        return None
    failure = task.exception()
    return failure if isinstance(failure, Exception) else None


async def _close(socket: WebSocket, serving: Exception | None, sending: Exception | None) -> None:
    """End the connection with the code that says why: 1011 after an error, 1013 for a client left behind."""
    if serving is not None:
        WS_ERRORS.labels(kind="server").inc()
        log.error("WebSocket client %s: serving failed; closing with 1011", socket.client, exc_info=serving)
        code, reason = INTERNAL_ERROR, "internal error"
    elif isinstance(sending, ClientTooSlow):
        code, reason = SLOW_CLIENT_CLOSE, "client too slow"
    elif sending is not None:
        WS_ERRORS.labels(kind="send").inc()
        log.warning(
            "WebSocket client %s: sending failed (%s: %s); closing", socket.client, type(sending).__name__, sending
        )
        code, reason = INTERNAL_ERROR, "send failed"
    else:
        return  # the client left
    if socket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await socket.close(code=code, reason=reason)


async def _receive_forever(backend: Backend, client: Subscriber) -> None:
    hub = backend.hub
    while True:
        frame = await client.socket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        WS_RECEIVED.inc()
        try:
            message = _parse(text_of(frame["bytes"], "frame") if frame.get("text") is None else frame["text"])
        except ContractError:  # a binary frame that is not UTF-8
            message = None
        job_id = message.get("jobId") if message else None
        if not message or not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            WS_ERRORS.labels(kind="bad_message").inc()
            client.offer(FAILED)
        elif message["action"] == "subscribe" and (job_id in client.jobs or len(client.jobs) < MAX_SUBSCRIPTIONS):
            hub.subscribe(client, job_id)
            client.offer(_response("subscribed", job_id))
            await hub.follow(job_id)
            status, progress, error = await _initial_state(backend, job_id)
            client.offer_update(job_id, hub.current(job_id, status, progress, error))
        elif message["action"] == "unsubscribe":
            hub.unsubscribe(client, job_id)
            client.offer(_response("unsubscribed", job_id))
        else:
            WS_ERRORS.labels(kind="bad_message").inc()
            client.offer(FAILED)
        # Let the sender write the answer before the next message is taken. Messages that came in one read are all
        # queued already, and receive() hands them over without yielding: their answers would all count as unread,
        # and a client that sent 257 in one write was closed as too slow. A client that does not read still is.
        await asyncio.sleep(0)


class WebSocketEndpoint:
    """Serves `/ws` in front of the HTTP middleware and router (ASGI middleware, added last so it runs first).

    A socket lives for hours, and every layer it passed through would keep a suspended frame of its own for all that
    time: fifteen of them (CORS, body limits, metrics, exception handling, routing), over a third of what a client
    costs the API. None of them does anything for a WebSocket."""

    def __init__(self, app, path: str = "/ws"):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and scope["path"] == self.path:
            return await websocket(WebSocket(scope, receive, send))
        return await self.app(scope, receive, send)
