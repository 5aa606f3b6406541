"""WebSocket `/ws` (PROTOCOL §6): subscribe/unsubscribe, the current state at once, then pushed updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from api.auth import key_is_valid
from api.deps import Backend, get_backend
from api.errors import ApiError
from api.hub import SEND_TIMEOUT, SLOW_CLIENT_CLOSE, Subscriber
from api.jobs import job_status
from core.metrics import (
    WS_CONNECTED,
    WS_CONNECTIONS,
    WS_ERRORS,
    WS_LIFETIME,
    WS_RECEIVED,
)

router = APIRouter()

MAX_MESSAGE = 4096
MAX_SUBSCRIPTIONS = 1000
AUTH_TIMEOUT = 10.0
POLICY_VIOLATION = 1008
FAILED = json.dumps({"action": "response", "message": "failed"})


def _response(message: str, job_id: str) -> str:
    return json.dumps({"action": "response", "message": message, "jobId": job_id})


def _parse(text: str) -> dict | None:
    """A client message with a string `action`, or None when it is not one."""
    if len(text) > MAX_MESSAGE:
        return None
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
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
    except ApiError:
        return "not_found", 0.0, None
    return state["status"], state["progress"], state.get("error")


@router.websocket("/ws")
async def websocket(socket: WebSocket):
    backend = get_backend(socket)
    hub = backend.hub
    await socket.accept()
    if not await _authorised(socket, backend.settings.api_keys):
        await socket.close(code=POLICY_VIOLATION, reason="missing or invalid API key")
        return
    client = Subscriber(socket)
    sender = asyncio.create_task(client.send_forever())
    WS_CONNECTIONS.inc()
    WS_CONNECTED.inc()
    started = time.monotonic()
    try:
        receiving = asyncio.create_task(_receive_forever(backend, client))
        dropped = asyncio.create_task(client.dropped.wait())
        done, pending = await asyncio.wait({sender, receiving, dropped}, return_when=asyncio.FIRST_COMPLETED)
        if sender in done and not sender.cancelled() and sender.exception():
            WS_ERRORS.labels(kind="send").inc()
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=SEND_TIMEOUT)
    finally:
        hub.leave(client)
        sender.cancel()
        WS_CONNECTED.dec()
        WS_LIFETIME.observe(time.monotonic() - started)
        if client.dropped.is_set() and socket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket.close(code=SLOW_CLIENT_CLOSE, reason="client too slow"), 2)


async def _receive_forever(backend: Backend, client: Subscriber) -> None:
    hub = backend.hub
    while True:
        frame = await client.socket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        WS_RECEIVED.inc()
        text = frame.get("text")
        if text is None:
            text = (frame.get("bytes") or b"").decode("utf-8", errors="replace")
        message = _parse(text)
        job_id = message.get("jobId") if message else None
        if not message or not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            WS_ERRORS.labels(kind="bad_message").inc()
            _reply(client, FAILED)
        elif message["action"] == "subscribe" and (job_id in client.jobs or len(client.jobs) < MAX_SUBSCRIPTIONS):
            hub.subscribe(client, job_id)
            _reply(client, _response("subscribed", job_id))
            status, progress, error = await _initial_state(backend, job_id)
            _reply(client, hub.current(job_id, status, progress, error))
        elif message["action"] == "unsubscribe":
            hub.unsubscribe(client, job_id)
            _reply(client, _response("unsubscribed", job_id))
        else:
            WS_ERRORS.labels(kind="bad_message").inc()
            _reply(client, FAILED)


def _reply(client: Subscriber, message: str) -> None:
    if not client.offer(message):
        WS_ERRORS.labels(kind="slow_client").inc()
