"""Hostile bytes at the bridge (issue 8): process:control, process:data, the pub/sub channels and WebSocket frames.

Each class of garbage is set aside (a dead letter naming why, with the raw bytes kept readable) or refused
(`failed` over WebSocket), no consumer dies, and a job submitted right after still completes, pushed to a
WebSocket client that subscribed while it ran.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import uuid
from collections.abc import Mapping

import pytest
import redis.asyncio as aioredis

from core.contracts import contracts
from handoff.relay import HandbackRelay
from handoff.streams import ensure_group
from tests.e2e import BRIDGE, outcome, submit, wait_for
from tests.test_exactly_once import signals, start_python_job
from tests.ws_clients import metrics, ws_client
from workflows.names import CONTROL_SOURCE, HANDBACK

pytestmark = pytest.mark.timeout(120)

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "after hostile input"}}}
OVER_ENTRY_LIMIT = (4 << 20) + 1  # the default SPINBOT_MAX_ENTRY_BYTES, plus one
RESTARTS = "spinbot_task_restarts_total"


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = {"down": value}
    return value


def handback(job_id: str, **output) -> dict:
    """A schema-valid handback of a sadtalker segment for `job_id`, with `output` on its first python node."""
    graph = json.loads(json.dumps(contracts().pipelines["sadtalker"]))
    for node in graph["nodes"]:
        node["status"] = "completed"
    graph["nodes"][1]["output"] = output
    return {"schema": "langgraph.v1", "workflowId": job_id, "metadata": {"handoff": {"segment": 1}}, **graph}


def hostile_entries(marker: str) -> dict[str, tuple[dict, str]]:
    """Stream entries of every hostile class: name → (fields, what the dead letter's error must say)."""
    job = str(uuid.uuid4())

    def entry(graph: str | bytes, job_id: str | bytes = job, **extra) -> dict:
        return {"jobId": job_id, "created": "1", "graph": graph, "probe": marker, **extra}

    valid = json.dumps(handback(job))
    return {
        "invalid UTF-8 in the graph": (entry(b'{"schema": "\xff\xfe"}'), "graph: not valid UTF-8"),
        "invalid UTF-8 in the jobId": (entry(valid, job_id=b"\xc3\x28"), "jobId: not valid UTF-8"),
        "invalid UTF-8 in a field name": (entry(valid, **{"\udcff": "x"}), "field name: not valid UTF-8"),
        "a surrogate as UTF-8 bytes": (entry(b'{"a": "\xed\xa0\x80"}'), "not valid UTF-8"),
        "deep JSON (RecursionError)": (entry("[" * 100_000), "nested too deeply"),
        "nested past the depth limit": (entry(json.dumps(handback(job, deep=nested(100)))), "nested deeper than 64"),
        "NaN": (entry(valid.replace('"output": {}', '"output": {"x": NaN}', 1)), "NaN is not a JSON number"),
        "a NUL in a string": (entry(json.dumps(handback(job, note="a\x00b"))), "NUL"),
        "a lone surrogate escape": (entry(json.dumps(handback(job, note="\ud800"))), "lone UTF-16 surrogate"),
        "oversize entry": (entry("x" * OVER_ENTRY_LIMIT), "over the limit"),
    }


def _raw_field_names(fields: dict) -> dict:
    """XADD field names: a str holding surrogate escapes stands for the raw (invalid UTF-8) bytes."""
    return {(k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k): v for k, v in fields.items()}


def is_ours(fields: dict, marker: str) -> bool:
    """A dead letter holding `marker` in a field, as text or inside a field stored base64-encoded."""
    encoded = set(fields.get("base64", "").split(","))
    for name, value in fields.items():
        text = base64.b64decode(value).decode("utf-8", "replace") if name in encoded else value
        if marker in text:
            return True
    return False


async def dead_letters(redis, stream: str, marker: str, count: int, timeout: float = 20) -> list[dict]:
    async def ours():
        # The newest entries only: other tests' floods of garbage can leave a long stream behind.
        found = [fields for _, fields in await redis.xrevrange(stream, count=2000) if is_ours(fields, marker)]
        return found if len(found) >= count else None

    return await wait_for(ours, timeout, f"{count} dead letters in {stream}")


def assert_reasons(letters: list[dict], cases: Mapping[str, tuple[object, str]]) -> None:
    errors = [letter["error"] for letter in letters]
    for name, (_, reason) in cases.items():
        assert any(reason in error for error in errors), f"{name}: no dead letter says {reason!r} in {errors}"


async def job_completes_seen_by_a_client(stack, llm) -> str:
    """Submit a job that runs for a moment; a client subscribed while it runs must get `completed` pushed."""
    llm.delay = 0.5
    async with ws_client(stack.api_url) as client:
        job_id = await submit(stack, SADTALKER)
        state = await client.subscribe(job_id)
        assert state["status"] != "completed", "the job must still run when the client subscribes"
        updates = await client.updates_until(job_id, "completed", timeout=30)
    assert updates[-1]["progress"] == 1.0
    assert await outcome(stack, job_id) == ("completed", None)
    return job_id


async def task_restarts(stack) -> dict:
    """spinbot_task_restarts_total by task: the relay, the listener and the hub run in this process too."""
    return {labels: value for (name, labels), value in (await metrics(stack.api)).items() if name == RESTARTS}


@pytest.fixture(autouse=True)
async def nothing_dies(stack):
    """No consumer may die of what a test sends: no supervised task restarted, the data-plane worker alive."""
    before = await task_restarts(stack)
    yield
    assert await task_restarts(stack) == before, "a background task died and was restarted"
    assert stack.dataplane_task is not None and not stack.dataplane_task.done(), "the data-plane worker died"


@pytest.fixture
async def raw_redis(redis_url):
    """A client whose replies stay bytes: hostile entries are read back without decoding them."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_hostile_handbacks_are_dead_lettered_and_the_relay_keeps_relaying(stack, llm, raw_redis):
    marker = uuid.uuid4().hex
    cases = hostile_entries(marker)
    cases["over Temporal's payload limit"] = (
        {"jobId": (job := str(uuid.uuid4())), "created": "1", "probe": marker},
        "over Temporal's payload limit",
    )
    cases["over Temporal's payload limit"][0]["graph"] = json.dumps(handback(job, blob="x" * (3 << 20)))
    ids = [await raw_redis.xadd(BRIDGE.control_stream, _raw_field_names(fields)) for fields, _ in cases.values()]
    try:
        letters = await dead_letters(stack.redis, BRIDGE.dead_letter(BRIDGE.control_stream), marker, len(cases))
        assert_reasons(letters, cases)
        assert all(letter["stream"] == BRIDGE.control_stream for letter in letters)
        pending = await raw_redis.xpending_range(BRIDGE.control_stream, BRIDGE.control_group, "-", "+", 1000)
        assert not {p["message_id"] for p in pending} & set(ids), "every hostile entry is acked"
        await job_completes_seen_by_a_client(stack, llm)
    finally:
        await raw_redis.xdel(BRIDGE.control_stream, *ids)


async def test_dead_letters_keep_bytes_that_are_not_text_readable(stack, llm, raw_redis):
    marker = uuid.uuid4().hex
    graph = b'{"schema": "\xff' + marker.encode() + b'"}'
    entry_id = await raw_redis.xadd(BRIDGE.control_stream, {"jobId": "j", "graph": graph, "probe": marker})
    try:
        (letter,) = await dead_letters(stack.redis, BRIDGE.dead_letter(BRIDGE.control_stream), marker, 1)
    finally:
        await raw_redis.xdel(BRIDGE.control_stream, entry_id)
    assert letter["base64"] == "graph" and base64.b64decode(letter["graph"]) == graph
    assert letter["jobId"] == "j" and letter["probe"] == marker, "fields that are text stay as they were"


async def test_hostile_segments_do_not_strand_the_rest_of_their_batch(stack, llm, raw_redis):
    """Garbage and a real segment read in one batch: the garbage is set aside, the segment still runs."""
    marker = uuid.uuid4().hex
    cases = hostile_entries(marker)
    llm.delay = 0.5
    async with ws_client(stack.api_url) as client:
        async with stack.no_dataplane():
            ids = [await raw_redis.xadd(BRIDGE.data_stream, _raw_field_names(f)) for f, _ in cases.values()]
            job_id = await submit(stack, SADTALKER)
            assert (await client.subscribe(job_id))["status"] != "completed"

            async def segment_pushed():
                entries = await raw_redis.xrevrange(BRIDGE.data_stream, count=50)
                return any(fields.get(b"jobId") == job_id.encode() for _, fields in entries)

            await wait_for(segment_pushed, 20, "the job's segment on process:data")
        # The worker starts again here: one read takes the garbage and the segment together.
        try:
            assert (await client.updates_until(job_id, "completed", timeout=30))[-1]["progress"] == 1.0
            letters = await dead_letters(stack.redis, BRIDGE.dead_letter(BRIDGE.data_stream), marker, len(cases))
            assert_reasons(letters, cases)
            pending = await raw_redis.xpending_range(BRIDGE.data_stream, BRIDGE.workers_group, "-", "+", 1000)
            assert not {p["message_id"] for p in pending} & set(ids), "every hostile entry is acked"
        finally:
            await raw_redis.xdel(BRIDGE.data_stream, *ids)
    await job_completes_seen_by_a_client(stack, llm)


def hostile_messages(job: str) -> dict[str, tuple[bytes, bytes, str]]:
    """name → (channel, payload, what the dead letter's error must say); every one names `job` somewhere."""
    status, progress, data = (BRIDGE.channel(kind, job).encode() for kind in ("status", "progress", "data"))

    def payload(**fields) -> bytes:
        return json.dumps({"jobId": job, **fields}).encode()

    return {
        "invalid UTF-8 payload": (status, b'{"jobId": "' + job.encode() + b'", "status": "\xff"}', "not valid UTF-8"),
        "invalid UTF-8 channel": (status + b"\xff", payload(status="running"), "channel: not valid UTF-8"),
        "deep JSON (RecursionError)": (progress, b"[" * 100_000, "nested too deeply"),
        "nested past the depth limit": (data, payload(data=nested(100)), "nested deeper than 64"),
        "oversize message": (data, payload(data="x" * OVER_ENTRY_LIMIT), "over the limit"),
        "NaN progress": (progress, b'{"jobId": "' + job.encode() + b'", "progress": NaN}', "NaN"),
        "Infinity progress": (progress, b'{"jobId": "' + job.encode() + b'", "progress": -Infinity}', "Infinity"),
        "progress 1e400": (progress, b'{"jobId": "' + job.encode() + b'", "progress": 1e400}', "not a JSON number"),
        "progress string 1e999": (progress, payload(progress="1e999"), "not a finite number"),
        "a NUL in data": (data, payload(data="a\x00b"), "NUL"),
        "a lone surrogate escape": (data, payload(data="\ud800"), "lone UTF-16 surrogate"),
        "unknown job": (
            BRIDGE.channel("status", f"not-a-job-{job}").encode(),
            json.dumps({"jobId": f"not-a-job-{job}", "status": "running"}).encode(),
            "unknown job",
        ),
    }


async def test_hostile_pubsub_messages_are_dead_lettered_and_pushes_go_on(stack, llm):
    job = str(uuid.uuid4())
    cases = hostile_messages(job)
    async with ws_client(stack.api_url) as watcher:
        await watcher.subscribe(job)  # the hub reads every message about a job someone follows
        for channel, message, _ in cases.values():
            await stack.redis.publish(channel, message)
        letters = await dead_letters(stack.redis, BRIDGE.dead_letter(BRIDGE.pubsub_source), job, len(cases))
        assert_reasons(letters, {name: (None, reason) for name, (_, _, reason) in cases.items()})
        await stack.redis.publish(
            BRIDGE.channel("status", job), json.dumps({"jobId": job, "status": "running", "source": CONTROL_SOURCE})
        )
        assert (await watcher.recv_about(job))["status"] == "running", "no garbage reached the client"
    job_id = await job_completes_seen_by_a_client(stack, llm)

    async def completion_recorded():
        events = (await stack.api.get(f"/api/jobs/{job_id}")).json()["events"]
        return any(event["status"] == "completed" for event in events)

    await wait_for(completion_recorded, 10, "the relay's listener to record the job's events")


FRAMES = {
    "binary, not UTF-8": b"\xff\xfe\xfd",
    "binary JSON with a byte that is not UTF-8": b'{"action": "subscribe", "jobId": "\xff"}',
    "binary NULs": b"\x00" * 64,
    "deep JSON (RecursionError)": "[" * 3000,
    "nested past the depth limit": json.dumps({"action": "subscribe", "jobId": "x", "n": nested(100)}),
    "a lone surrogate escape in jobId": '{"action": "subscribe", "jobId": "\\ud800"}',
    "a NUL in jobId": '{"action": "subscribe", "jobId": "a\\u0000b"}',
    "NaN": '{"action": "subscribe", "jobId": "x", "n": NaN}',
    "a huge integer": '{"action": "subscribe", "jobId": "x", "n": ' + "9" * 5000 + "}",
    "oversize text frame": "x" * 1_000_000,
}


async def test_hostile_websocket_frames_fail_and_the_socket_keeps_serving(stack, llm):
    llm.delay = 0.5
    async with ws_client(stack.api_url) as client:
        for name, frame in FRAMES.items():
            await client.send(frame)
            assert await client.recv() == {"action": "response", "message": "failed"}, name
        job_id = await submit(stack, SADTALKER)
        assert (await client.subscribe(job_id))["status"] != "completed"
        assert (await client.updates_until(job_id, "completed", timeout=30))[-1]["progress"] == 1.0


async def test_a_killed_pubsub_connection_is_replaced_and_pushes_resume(stack, llm):
    job = str(uuid.uuid4())
    async with ws_client(stack.api_url) as client:
        await client.subscribe(job)
        killed = [
            await stack.redis.client_kill_filter(_id=c["id"]) for c in await stack.redis.client_list(_type="pubsub")
        ]
        assert killed, "the hub and the relay's listener hold pub/sub connections"

        steps = itertools.count(1)

        async def pushed():
            message = json.dumps({"jobId": job, "progress": next(steps) / 1000})
            await stack.redis.publish(BRIDGE.channel("progress", job), message)
            try:
                return await asyncio.wait_for(client.recv_about(job), 0.2)
            except TimeoutError:
                return None

        update = await wait_for(pushed, 10, "a push after the hub's connection was killed")
        assert update["type"] == "update" and update["progress"] > 0
    await job_completes_seen_by_a_client(stack, llm)
    ready = await stack.api.get("/ready")
    assert ready.status_code == 200, ready.text


async def test_entries_left_pending_are_dead_lettered_when_bad_or_tried_too_often(stack, raw_redis):
    """A relay taking over what dead relays left: an entry that is not UTF-8 (which used to kill each relay in
    turn) and one already delivered to five relays that all died are both set aside; the relay keeps serving."""
    bridge = dataclasses.replace(
        BRIDGE, control_stream=f"t:{uuid.uuid4().hex}:control", claim_idle_ms=200, block_ms=200
    )
    stream, group, marker = bridge.control_stream, bridge.control_group, uuid.uuid4().hex
    await ensure_group(stack.redis, stream, group)
    job = str(uuid.uuid4())
    await raw_redis.xadd(stream, {"jobId": job, "graph": b"\xff", "probe": marker})
    tired = await raw_redis.xadd(stream, {"jobId": job, "graph": json.dumps(handback(job)), "probe": marker})
    await raw_redis.xreadgroup(group, "dead-relay-1", {stream: ">"}, count=2)
    for n in range(2, 6):  # four more relays took the second entry over, and died too
        await raw_redis.xclaim(stream, group, f"dead-relay-{n}", 0, [tired])
    relay = asyncio.create_task(HandbackRelay(stack.redis, stack.temporal, bridge, "live-relay").run())
    try:
        letters = await dead_letters(stack.redis, bridge.dead_letter(stream), marker, 2)
        errors = sorted(letter["error"] for letter in letters)
        assert "graph: not valid UTF-8" in errors[1] and "delivered 6 times" in errors[0], errors
        assert (await raw_redis.xpending(stream, group))["pending"] == 0
        assert not relay.done(), "the relay still serves"
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await raw_redis.delete(stream, bridge.dead_letter(stream))


@pytest.mark.parametrize("how", ["edge from no node", "edge to no node", "a node id twice"])
async def test_a_handback_whose_graph_is_not_whole_is_dead_lettered_not_signalled(stack, raw_redis, how):
    """The relay parses handbacks as the worker parses segments: a graph with an edge naming no node, or an id used
    twice, is set aside before it reaches the job's workflow (it used to be signalled, its edges dropped unread)."""
    bridge = dataclasses.replace(BRIDGE, control_stream=f"t:{uuid.uuid4().hex}:control", block_ms=200)
    stream, marker = bridge.control_stream, uuid.uuid4().hex
    async with stack.no_dataplane():
        job = await start_python_job(stack)  # a workflow waiting on its segment, which a signal would reach
        graph = handback(job)
        if how == "a node id twice":
            graph["nodes"].append(dict(graph["nodes"][1]))
        else:
            known = graph["nodes"][1]["id"]
            graph["edges"].append(
                {"from": "ghost", "to": known} if how == "edge from no node" else {"from": known, "to": "ghost"}
            )
        await ensure_group(stack.redis, stream, bridge.control_group)
        await raw_redis.xadd(stream, {"jobId": job, "created": "1", "graph": json.dumps(graph), "probe": marker})
        relay = asyncio.create_task(HandbackRelay(stack.redis, stack.temporal, bridge, "live-relay").run())
        try:
            (letter,) = await dead_letters(stack.redis, bridge.dead_letter(stream), marker, 1, timeout=5)
            assert ("duplicate id" if how == "a node id twice" else 'unknown node "ghost"') in letter["error"]
            assert (await raw_redis.xpending(stream, bridge.control_group))["pending"] == 0
            assert await signals(stack.temporal, job, HANDBACK) == 0
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await raw_redis.delete(stream, bridge.dead_letter(stream))
            await stack.temporal.get_workflow_handle(job).terminate(reason="test over")
