"""The hub's bookkeeping in races an end-to-end run cannot hit on purpose: a failure's error read from a slow Redis
while a progress push falls due or the job's watchers change, and a client leaving many busy jobs at once.

Clients are stand-ins that keep what the hub sends them (the hub only calls `send_text`); Redis is the real one,
behind a proxy that holds each of its replies for a while."""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import urlsplit

import pytest

from api.hub import Hub
from api.subscriber import QUEUE_LIMIT, ClientTooSlow, Subscriber, watch_sends
from core.redis import redis_client as make_redis_client
from core.supervise import TaskHealth
from spinbot.ports import free_port
from tests.e2e import BRIDGE
from workflows.names import CONTROL_SOURCE

pytestmark = pytest.mark.timeout(30)

ERROR = {"nodeId": "b", "message": "disk full", "code": "ENOSPC"}
FAILED_GRAPH = json.dumps(
    {"nodes": [{"id": "b", "status": "failed", "error": {"message": "disk full", "code": "ENOSPC"}}]}
)


class RecordingSocket:
    def __init__(self, stalled: bool = False):
        self.sent: list[dict] = []
        self.stalled = stalled

    async def send_text(self, message: str) -> None:
        if self.stalled:  # a client that stopped reading: the send never finishes
            await asyncio.Event().wait()
        self.sent.append(json.loads(message))


@contextlib.asynccontextmanager
async def slow_redis(redis_url: str, delay: float):
    """A Redis client whose every reply is held `delay` seconds by a TCP proxy in front of the real server."""
    target = urlsplit(redis_url)

    async def pipe(reader, writer, hold: float) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(pipe(client_reader, server_writer, 0), pipe(server_reader, client_writer, delay))

    port = free_port()
    proxy = await asyncio.start_server(relay, "127.0.0.1", port)
    redis = make_redis_client(f"redis://127.0.0.1:{port}/{target.path.lstrip('/') or 0}")
    try:
        yield redis
    finally:
        await redis.aclose()
        proxy.close()


def message(kind: str, job_id: str, **payload) -> tuple[bytes, bytes]:
    return BRIDGE.channel(kind, job_id).encode(), json.dumps({"jobId": job_id, **payload, "created": "1"}).encode()


SENDERS: dict[Subscriber, asyncio.Task] = {}


async def follow(hub: Hub, job_id: str, status: str = "running", progress: float = 0.0) -> Subscriber:
    """A client subscribed to `job_id` whose current state was read as (status, progress)."""
    client = Subscriber(RecordingSocket())  # type: ignore[arg-type]
    SENDERS[client] = asyncio.create_task(client.send_forever())
    hub.subscribe(client, job_id)
    client.offer_update(job_id, hub.current(job_id, status, progress))
    return client


def stop(*clients: Subscriber) -> None:
    for client in clients:
        SENDERS.pop(client).cancel()


def seen(client: Subscriber) -> list[tuple]:
    return [(m["status"], m["progress"], m.get("error")) for m in client.socket.sent]  # type: ignore[attr-defined]


async def test_a_failure_read_from_a_slow_redis_is_never_pushed_without_its_error(redis_url, redis_client, job_id):
    await redis_client.hset(BRIDGE.job_key(job_id), "graph", FAILED_GRAPH)
    async with slow_redis(redis_url, 0.3) as redis:
        hub = Hub(BRIDGE, redis, progress_pushes_per_second=10)
        client = await follow(hub, job_id)
        await hub.on_message(*message("progress", job_id, progress=0.1))  # pushed at once
        await hub.on_message(*message("progress", job_id, progress=0.2))  # due a tenth of a second later
        await hub.on_message(*message("status", job_id, status="failed", source=CONTROL_SOURCE))
        await asyncio.sleep(0.2)
    # Before: the due progress push said `failed` with a stand-in error while the real one was being read.
    stop(client)
    assert [error for status, _, error in seen(client) if status == "failed"] == [ERROR], seen(client)
    assert seen(client)[-1] == ("failed", 0.2, ERROR)


async def test_watchers_who_come_while_a_failure_is_read_get_no_older_state(redis_url, redis_client, job_id):
    await redis_client.hset(BRIDGE.job_key(job_id), "graph", FAILED_GRAPH)
    async with slow_redis(redis_url, 0.3) as redis:
        hub = Hub(BRIDGE, redis)
        first = await follow(hub, job_id)
        reading = asyncio.create_task(
            hub.on_message(*message("status", job_id, status="failed", source=CONTROL_SOURCE))
        )
        await asyncio.sleep(0.1)
        hub.leave(first)  # every watcher leaves while the error is read; a new one comes, with a newer progress
        second = await follow(hub, job_id, "running", 0.3)
        await reading
        await asyncio.sleep(0.05)
    stop(first, second)
    # Before: the view read before the wait was pushed to the newcomer: `failed` at progress 0.0, after 0.3.
    progress = [p for _, p, _ in seen(second)]
    assert progress == sorted(progress) and seen(second)[-1] == ("failed", 0.3, ERROR), seen(second)
    assert hub.views[job_id].status == "failed"


async def test_a_client_that_reads_may_leave_many_busy_jobs_at_once():
    hub = Hub(BRIDGE)
    client = Subscriber(RecordingSocket(stalled=True))  # type: ignore[arg-type]
    SENDERS[client] = asyncio.create_task(client.send_forever())
    jobs = [f"job-{i}" for i in range(1000)]
    for job_id in jobs:  # a slow link: an update of each is still queued
        hub.subscribe(client, job_id)
        client.offer_update(job_id, hub.current(job_id, "running", 0.0))
    for job_id in jobs[: QUEUE_LIMIT - 1]:
        hub.unsubscribe(client, job_id)
        assert client.offer(json.dumps({"action": "response", "message": "unsubscribed", "jobId": job_id}))
    # Before: counted against the queued updates of jobs it had left, it was dropped after 129 answers.
    assert not client.dropped
    for job_id in jobs[QUEUE_LIMIT - 1 :]:
        client.offer(json.dumps({"action": "response", "message": "unsubscribed", "jobId": job_id}))
    assert client.dropped, "a client that never reads its answers is still dropped"
    stop(client)


async def test_the_send_watch_drops_a_client_whose_socket_takes_nothing_and_only_that_one():
    stalled = Subscriber(RecordingSocket(stalled=True), send_timeout=0.3)  # type: ignore[arg-type]
    idle = Subscriber(RecordingSocket(), send_timeout=0.3)  # type: ignore[arg-type]
    reading = Subscriber(RecordingSocket(), send_timeout=0.3)  # type: ignore[arg-type]
    senders = {client: asyncio.create_task(client.send_forever()) for client in (stalled, idle, reading)}
    watch = asyncio.create_task(watch_sends({stalled, idle, reading}, TaskHealth("watch"), every=0.05))
    try:
        stalled.offer_update("job", '{"n": 0}')
        for n in range(8):  # over twice the timeout, in sends that each go through at once
            reading.offer_update("job", json.dumps({"n": n}))
            await asyncio.sleep(0.1)
        with pytest.raises(ClientTooSlow):
            await asyncio.wait_for(senders[stalled], 1)
        assert stalled.dropped and not idle.dropped and not reading.dropped
        assert [m["n"] for m in reading.socket.sent] == list(range(8))  # type: ignore[attr-defined]
    finally:
        watch.cancel()
        for sender in senders.values():
            sender.cancel()


async def test_a_catch_up_while_a_clients_first_state_is_read_keeps_the_newer_state(redis_url, redis_client, job_id):
    """A client subscribed while this replica had no pub/sub connection: its first state was read (`running`) before
    the new connection subscribed, and the job completed in between. The catch-up, which runs once the job's
    channels are subscribed again, finds `completed`; the state sent after `subscribed` must say so."""
    redis = make_redis_client(redis_url)
    hub = Hub(BRIDGE, redis)
    client = Subscriber(RecordingSocket())  # type: ignore[arg-type]
    SENDERS[client] = asyncio.create_task(client.send_forever())
    try:
        hub.subscribe(client, job_id)
        await redis_client.set(BRIDGE.status_key(job_id), "completed", ex=60)
        await redis_client.set(BRIDGE.progress_key(job_id), "1", ex=60)
        await hub.catch_up()  # the first state read ("running", 0.4) is still under way
        client.offer_update(job_id, hub.current(job_id, "running", 0.4))
        await asyncio.sleep(0.1)
        assert seen(client)[-1] == ("completed", 1.0, None)
    finally:
        stop(client)
        await redis.aclose()
