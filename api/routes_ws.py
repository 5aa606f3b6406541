"""WebSocket `/ws` (PROTOCOL §6): subscribe/unsubscribe, the current state at once, then pushed updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from api.auth import key_is_valid
from api.deps import Backend, backend_of
from api.errors import ApiError
from api.hub import SLOW_CLIENT_CLOSE, Subscriber
from api.jobs import job_status
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
router = APIRouter()

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
        frame = await asyncio.wait_for(socket.receive(), AUTH_TIMEOUT)
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
    sender = client.start_sending()
    WS_CONNECTIONS.inc()
    WS_CONNECTED.inc()
    started = time.monotonic()
    receiving = asyncio.create_task(_receive_forever(backend, client))
    try:
        _, pending = await asyncio.wait({sender, receiving}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=client.send_timeout)
    finally:
        hub.leave(client)
        for task in (sender, receiving):
            task.cancel()
        WS_CONNECTED.dec()
        WS_LIFETIME.observe(time.monotonic() - started)
        await _close(socket, client, _failure(receiving), _failure(sender))


def _failure(task: asyncio.Task) -> BaseException | None:
    """What a finished task raised; reading it here is what keeps "Task exception was never retrieved" away."""
    if not task.done() or task.cancelled():
        return None
    return task.exception()


async def _close(socket: WebSocket, client: Subscriber, serving: BaseException | None, sending: BaseException | None):
    """End the connection with the code that says why: 1011 after an error, 1013 for a client left behind."""
    if serving is not None:
        WS_ERRORS.labels(kind="server").inc()
        log.error("WebSocket client %s: serving failed; closing with 1011", socket.client, exc_info=serving)
        code, reason = INTERNAL_ERROR, "internal error"
    elif sending is not None:
        WS_ERRORS.labels(kind="send").inc()
        log.warning(
            "WebSocket client %s: sending failed (%s: %s); closing", socket.client, type(sending).__name__, sending
        )
        code, reason = INTERNAL_ERROR, "send failed"
    elif client.dropped:
        code, reason = SLOW_CLIENT_CLOSE, "client too slow"
    else:
        return  # the client left
    if socket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.close(code=code, reason=reason), 2)


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
            status, progress, error = await _initial_state(backend, job_id)
            client.offer_update(job_id, hub.current(job_id, status, progress, error))
        elif message["action"] == "unsubscribe":
            hub.unsubscribe(client, job_id)
            client.offer(_response("unsubscribed", job_id))
        else:
            WS_ERRORS.labels(kind="bad_message").inc()
            client.offer(FAILED)


# A plain Starlette route: FastAPI's dependency machinery would stay alive for the whole life of every socket.
router.add_websocket_route("/ws", websocket)
