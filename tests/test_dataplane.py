"""The reference data-plane worker against a real Redis: handback shape, progress, failures, dead letters."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
import uuid
from contextlib import suppress
from datetime import datetime

import pytest
import redis.asyncio as aioredis

from core.contracts import contracts
from core.messages import parse_graph_entry
from core.redis import redis_client as make_redis_client
from core.schemas import first_error
from handoff.dataplane import DataPlaneWorker
from handoff.simulator import Simulator
from workflows.graph import OPTIONAL_NODE_FIELDS, nodes_by_id

ARTIFACT_KEYS = {"bucket", "key", "size_bytes", "created_at", "content_type"}
TIMEOUT = 5.0


@pytest.fixture
def bridge():
    tag = uuid.uuid4().hex
    # A short BLOCK bounds how long a stopping worker may take (see DataPlaneWorker._read_forever).
    return dataclasses.replace(
        contracts().bridge, data_stream=f"t:{tag}:data", control_stream=f"t:{tag}:control", block_ms=500
    )


@pytest.fixture
async def start_worker(redis_url, bridge):
    """Start a worker as a task on its own connection; every one is cancelled and closed after the test."""
    running = []

    async def start(
        simulator: Simulator | None = Simulator(0.0),
        handback_failures: bool = False,
        concurrency: int = 8,
        name: str = "test-worker",
    ) -> None:
        # Opened as `spinbot dataplane` opens its own (core.redis), named so a test can find its connections.
        client = make_redis_client(f"{redis_url}?client_name={name}", block_ms=bridge.block_ms)
        worker = DataPlaneWorker(
            client,
            bridge,
            contracts().python_capabilities,
            simulator,
            name,
            handback_failures=handback_failures,
            concurrency=concurrency,
        )
        running.append((asyncio.create_task(worker.run()), client))

    yield start
    for task, client in running:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def pipeline_graph(job_id: str, variant: str) -> dict:
    """A graph of a shipped pipeline whose node-plane `script` has already completed, as the control plane pushes it."""
    template = copy.deepcopy(contracts().pipelines[variant])
    for node in template["nodes"]:
        node["status"] = "pending"
    script = nodes_by_id(template)["script"]
    script["status"] = "completed"
    script["output"] = {"stagePrompt": "a calm studio", "narration": "Hello there.", "currentProgress": 0.05}
    metadata = {"planner": "test", "pipeline": variant, "handoff": {"segment": 1, "attempt": 1}}
    return {"schema": "langgraph.v1", "workflowId": job_id, "metadata": metadata, **template}


async def push(redis, bridge, job_id: str, graph: dict) -> str:
    fields = {"jobId": job_id, "created": str(int(time.time() * 1000)), "graph": json.dumps(graph)}
    return await redis.xadd(bridge.data_stream, fields)


async def next_entry(redis, stream: str, after: str = "0", timeout: float = TIMEOUT) -> tuple[str, dict]:
    """The first entry of `stream` after id `after`, waiting at most `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        reply = await redis.xread({stream: after}, count=1, block=max(1, int(left * 1000)))
        if reply:
            return reply[0][1][0]
    raise AssertionError(f"nothing on {stream} within {timeout}s")


async def handback_of(redis, bridge, job_id: str, timeout: float = TIMEOUT) -> dict:
    """The graph of the first handback for `job_id`, as the worker serialised it (nulls kept)."""
    after = "0"
    deadline = time.monotonic() + timeout
    while True:
        after, fields = await next_entry(redis, bridge.control_stream, after, deadline - time.monotonic())
        if fields["jobId"] == job_id:
            assert fields["created"].isdigit()
            return json.loads(fields["graph"])


class JobChannels:
    """A subscription to one job's status, progress and data channels."""

    def __init__(self, redis, bridge, job_id: str):
        self.kinds = {bridge.channel(kind, job_id): kind for kind in ("status", "progress", "data")}
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self):
        await self.pubsub.subscribe(*self.kinds)
        return self

    async def __aexit__(self, *_):
        await self.pubsub.aclose()

    async def until(self, done, timeout: float = TIMEOUT) -> list[tuple[str, dict, float]]:
        """(kind, payload, arrival time) of messages until `done(messages)` holds; fails after `timeout`."""
        seen: list = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"pub/sub condition not met within {timeout}s; got {seen}"
            message = await self.pubsub.get_message(timeout=left)
            if message:
                seen.append((self.kinds[message["channel"]], json.loads(message["data"]), time.monotonic()))
        return seen


def count(kind: str, n: int):
    return lambda seen: sum(1 for k, *_ in seen if k == kind) >= n


def status_is(status: str):
    return lambda seen: any(k == "status" and p["status"] == status for k, p, _ in seen)


def progress_values(seen) -> list[float]:
    return [p["progress"] for k, p, _ in seen if k == "progress"]


async def test_sadtalker_is_handed_back_completed_in_the_existing_workers_shape(
    redis_client, bridge, start_worker, job_id
):
    await start_worker()
    graph = pipeline_graph(job_id, "sadtalker")
    async with JobChannels(redis_client, bridge, job_id) as channels:
        await push(redis_client, bridge, job_id, graph)
        back = await handback_of(redis_client, bridge, job_id)
        seen = await channels.until(count("data", 3))

    assert back["metadata"] == graph["metadata"]
    assert back["context"] is None
    assert all(set(OPTIONAL_NODE_FIELDS) <= set(node) for node in back["nodes"])
    assert all(edge["kind"] == "normal" and edge["metadata"] is None for edge in back["edges"])
    nodes = nodes_by_id(back)
    assert {k: v for k, v in nodes["script"].items() if v is not None} == nodes_by_id(graph)["script"]
    chain = [nodes[i] for i in ("train_voice", "generate_video", "postprocess_video")]
    assert [n["status"] for n in chain] == ["completed"] * 3
    assert all(n["output"]["simulated"] is True and n["output"]["preset"] == "sadtalker" for n in chain)
    assert all(n["tags"] is None and n["telemetry"] is None and n["error"] is None for n in chain)
    progress = [0.05] + [n["output"]["currentProgress"] for n in chain]
    assert progress == sorted(progress) and len(set(progress)) == 4
    assert progress[-1] == pytest.approx(1.0)
    assert chain[1]["input"]["currentProgress"] == chain[0]["output"]["currentProgress"]
    assert parse_graph_entry({"jobId": job_id, "created": "1", "graph": json.dumps(back)})[1]["workflowId"] == job_id

    assert all(first_error(payload, "pubsub.schema.json", kind) is None for kind, payload, _ in seen)
    assert seen[0][0] == "status" and seen[0][1]["status"] == "running" and seen[0][1]["created"].isdigit()
    data = [json.loads(p["data"]) for k, p, _ in seen if k == "data"]
    assert [d["nodeId"] for d in data] == ["train_voice", "generate_video", "postprocess_video"]
    assert data[2]["output"] == chain[2]["output"]
    values = progress_values(seen)
    assert values and values == sorted(values) and all(0 < v <= 1 for v in values)


async def test_f5tts_chain_ends_with_a_video_artifact(redis_client, bridge, start_worker, job_id):
    await start_worker()
    graph = pipeline_graph(job_id, "f5tts_infinitetalk")
    nodes_by_id(graph)["f5_to_tts"]["params"] = {"audioPath": "input/audio/x.wav", "refText": "hi"}
    await push(redis_client, bridge, job_id, graph)

    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id))
    audio = nodes["f5_to_tts"]["output"]["audioArtifact"]
    video = nodes["upscale_video"]["output"]["videoArtifact"]
    assert set(audio) == set(video) == ARTIFACT_KEYS
    assert (audio["content_type"], video["content_type"], video["bucket"]) == ("audio/wav", "video/mp4", "output")
    assert video["key"] == f"jobs/{job_id}/upscale_video.mp4"
    datetime.fromisoformat(video["created_at"].replace("Z", "+00:00"))
    assert nodes["infinite_talk"]["input"]["audioArtifact"] == audio
    assert nodes["upscale_video"]["input"]["videoArtifact"] == nodes["infinite_talk"]["output"]["videoArtifact"]
    assert nodes["upscale_video"]["output"]["currentProgress"] == pytest.approx(1.0)


async def test_parallel_branches_run_concurrently(redis_client, bridge, start_worker, job_id):
    seconds = 0.8
    await start_worker(Simulator(seconds))
    async with JobChannels(redis_client, bridge, job_id) as channels:
        await push(redis_client, bridge, job_id, pipeline_graph(job_id, "svd_wav2lip"))
        seen = await channels.until(count("data", 2))
    finished = {json.loads(p["data"])["nodeId"]: at for k, p, at in seen if k == "data"}
    assert set(finished) == {"train_voice", "train_lora"}
    # One after the other, the second would finish a whole node's time after the first.
    assert abs(finished["train_voice"] - finished["train_lora"]) < seconds / 2
    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id, timeout=3 * seconds + TIMEOUT))
    # Weights sum to 1.5: each node hands on the completed weight (itself included) over the total,
    # so the parallel branches are neither lost nor counted twice.
    assert nodes["generate_video"]["output"]["currentProgress"] == pytest.approx((0.05 + 0.25 + 0.5 + 0.4) / 1.5)
    assert nodes["postprocess_video"]["output"]["currentProgress"] == pytest.approx(1.0)


async def test_a_failed_node_is_recorded_not_handed_back(redis_client, bridge, start_worker, job_id):
    await start_worker(concurrency=1)
    graph = pipeline_graph(job_id, "sadtalker")
    nodes_by_id(graph)["generate_video"]["params"]["simulateFailure"] = "GPU out of memory (simulated)"
    async with JobChannels(redis_client, bridge, job_id) as channels:
        failing_entry = await push(redis_client, bridge, job_id, graph)
        await channels.until(status_is("failed"))
    record = await redis_client.hgetall(bridge.job_key(job_id))
    assert record["created"].isdigit()
    assert 0 < await redis_client.ttl(bridge.job_key(job_id)) <= bridge.ttl
    nodes = nodes_by_id(json.loads(record["graph"]))
    assert nodes["train_voice"]["status"] == "completed"
    assert nodes["generate_video"]["status"] == "failed"
    assert nodes["generate_video"]["error"] == {"message": "GPU out of memory (simulated)", "code": "SIMULATED_FAILURE"}
    assert nodes["postprocess_video"]["status"] == "pending"

    # One entry at a time: once the next job is handed back, the failed one is long finished.
    good = str(uuid.uuid4())
    await push(redis_client, bridge, good, pipeline_graph(good, "sadtalker"))
    await handback_of(redis_client, bridge, good)
    assert await redis_client.xlen(bridge.control_stream) == 1
    pending = await redis_client.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 10)
    assert failing_entry not in {p["message_id"] for p in pending}


async def test_handback_failures_mode_hands_the_failed_node_back(redis_client, bridge, start_worker, job_id):
    await start_worker(handback_failures=True)
    graph = pipeline_graph(job_id, "sadtalker")
    nodes_by_id(graph)["train_voice"]["params"]["simulateFailure"] = "voice model diverged"
    await push(redis_client, bridge, job_id, graph)

    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id))
    assert nodes["train_voice"]["status"] == "failed"
    assert nodes["train_voice"]["error"]["message"] == "voice model diverged"
    assert nodes["generate_video"]["status"] == "pending" and nodes["generate_video"]["output"] is None
    assert not await redis_client.exists(bridge.job_key(job_id))


async def test_missing_current_progress_or_handler_fails_the_node(redis_client, bridge, start_worker, job_id):
    await start_worker(handback_failures=True)
    graph = {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "edges": [],
        "nodes": [
            {"id": "lonely", "service": "dummy.dummy_task", "plane": "python", "status": "pending"},
            {
                "id": "unknown",
                "service": "generate.lipsync",
                "plane": "python",
                "status": "pending",
                "input": {"currentProgress": 0},
            },
        ],
    }
    await push(redis_client, bridge, job_id, graph)

    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id))
    assert nodes["lonely"]["status"] == "failed"
    assert nodes["lonely"]["error"]["code"] == "INVALID_INPUT"
    assert "input.currentProgress" in nodes["lonely"]["error"]["message"]
    assert nodes["unknown"]["error"] == {
        "message": "no handler for service generate.lipsync on this worker",
        "code": "NO_HANDLER",
    }


async def test_capabilities_answer_with_the_manifest_as_a_json_string(redis_client, bridge, start_worker, job_id):
    await start_worker(simulator=None)
    # Nulls, as the worker itself sends them back, are accepted the way its models accept them.
    graph = {
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "context": None,
        "metadata": {"kind": "capabilities"},
        "nodes": [
            {
                "id": "worker.info",
                "service": "info.get_capabilities",
                "plane": "python",
                "status": "pending",
                "tags": None,
            },
            {"id": "control.info", "service": "info.get_capabilities", "plane": "node", "status": "pending"},
        ],
        "edges": [{"from": "worker.info", "to": "control.info", "metadata": None}],
    }
    await push(redis_client, bridge, job_id, graph)

    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id))
    caps = nodes["worker.info"]["output"]["workerCaps"]
    assert isinstance(caps, str) and json.loads(caps) == contracts().python_capabilities
    assert nodes["control.info"]["status"] == "pending" and nodes["control.info"]["output"] is None


async def test_garbage_goes_to_the_dead_letter_stream_and_the_worker_keeps_serving(
    redis_client, bridge, start_worker, job_id
):
    await start_worker(concurrency=1)
    good = pipeline_graph(job_id, "sadtalker")
    extra_key = copy.deepcopy(good)
    extra_key["nodes"][1]["gpu"] = "A100"
    bad_status = copy.deepcopy(good)
    bad_status["nodes"][1]["status"] = "sleeping"
    garbage = {
        "missing": ({"jobId": job_id, "created": "1"}, "graph"),
        "bad json": ({"jobId": job_id, "created": "1", "graph": "{not json"}, "not valid JSON"),
        "schema": ({"jobId": job_id, "created": "1", "graph": json.dumps(bad_status)}, "sleeping"),
        "extra key": ({"jobId": job_id, "created": "1", "graph": json.dumps(extra_key)}, "gpu"),
        "mismatch": ({"jobId": "someone-else", "created": "1", "graph": json.dumps(good)}, "workflowId"),
        "not objects": ({"jobId": job_id, "created": "1", "graph": json.dumps({**good, "nodes": [1]})}, "nodes"),
    }
    ids = [await redis_client.xadd(bridge.data_stream, fields) for fields, _ in garbage.values()]
    await push(redis_client, bridge, job_id, good)

    assert nodes_by_id(await handback_of(redis_client, bridge, job_id))["postprocess_video"]["status"] == "completed"
    dead = await redis_client.xrange(bridge.dead_letter(bridge.data_stream))
    assert len(dead) == len(garbage)
    for (_, entry), (fields, reason) in zip(dead, garbage.values(), strict=False):
        assert entry["stream"] == bridge.data_stream
        assert reason in entry["error"]
        assert {k: entry[k] for k in fields} == fields
    pending = await redis_client.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 100)
    assert not {p["message_id"] for p in pending} & set(ids)


def _disjointed(graph: dict, how: str) -> dict:
    """`graph` made schema-valid but not whole: an edge from or to a node it lacks, or a node id twice."""
    graph = copy.deepcopy(graph)
    if how == "edge from no node":
        graph["edges"].append({"from": "ghost", "to": "train_voice", "kind": "normal"})
    elif how == "edge to no node":
        graph["edges"].append({"from": "train_voice", "to": "ghost", "kind": "normal"})
    else:
        graph["nodes"].append(copy.deepcopy(nodes_by_id(graph)["train_voice"]))
    return graph


async def test_a_graph_with_edges_to_nowhere_or_twice_used_ids_is_dead_lettered(
    redis_client, bridge, start_worker, job_id
):
    """Readiness indexes nodes by id: an edge from a node the graph lacks crashed the entry (KeyError, left pending
    for ever), and one to nowhere or a repeated id ran a graph the control plane never planned. Each is set aside."""
    await start_worker(concurrency=1)
    good = pipeline_graph(job_id, "sadtalker")
    reasons = {
        "edge from no node": 'unknown node "ghost"',
        "edge to no node": 'unknown node "ghost"',
        "a node id twice": 'node "train_voice": duplicate id',
    }
    bad = {how: {"jobId": job_id, "created": "1", "graph": json.dumps(_disjointed(good, how))} for how in reasons}
    ids = [await redis_client.xadd(bridge.data_stream, fields) for fields in bad.values()]
    after = str(uuid.uuid4())
    await push(redis_client, bridge, after, pipeline_graph(after, "sadtalker"))

    assert nodes_by_id(await handback_of(redis_client, bridge, after))["postprocess_video"]["status"] == "completed"
    dead = await redis_client.xrange(bridge.dead_letter(bridge.data_stream))
    assert [entry["graph"] for _, entry in dead] == [fields["graph"] for fields in bad.values()]
    for (_, entry), reason in zip(dead, reasons.values(), strict=True):
        assert reason in entry["error"], entry["error"]
    pending = await redis_client.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 100)
    assert not {p["message_id"] for p in pending} & set(ids)
    assert all(fields["jobId"] != job_id for _, fields in await redis_client.xrange(bridge.control_stream))


async def test_progress_never_goes_backwards(redis_client, bridge, start_worker, job_id):
    await start_worker()
    # The control plane already recorded more progress than the input says: later nodes would start lower.
    await redis_client.set(bridge.progress_key(job_id), "0.6")
    async with JobChannels(redis_client, bridge, job_id) as channels:
        await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
        seen = await channels.until(count("data", 3))
    values = progress_values(seen)
    assert values[0] > 0.6
    assert values == sorted(values) and max(values) <= 1


async def test_a_vanished_group_is_recreated(redis_client, bridge, start_worker, job_id):
    await start_worker()
    await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
    await handback_of(redis_client, bridge, job_id)

    await redis_client.xgroup_destroy(bridge.data_stream, bridge.workers_group)
    second = str(uuid.uuid4())
    await push(redis_client, bridge, second, pipeline_graph(second, "sadtalker"))
    nodes = nodes_by_id(await handback_of(redis_client, bridge, second, timeout=bridge.block_ms / 1000 + TIMEOUT))
    assert nodes["postprocess_video"]["status"] == "completed"


async def test_a_killed_connection_does_not_stop_the_worker(redis_client, bridge, start_worker, job_id):
    name = f"dataplane-{uuid.uuid4().hex[:8]}"
    await start_worker(name=name)
    first = str(uuid.uuid4())
    await push(redis_client, bridge, first, pipeline_graph(first, "sadtalker"))
    await handback_of(redis_client, bridge, first)

    killed = [
        await redis_client.client_kill_filter(_id=c["id"])
        for c in await redis_client.client_list()
        if c["name"] == name
    ]
    assert killed
    await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
    nodes = nodes_by_id(await handback_of(redis_client, bridge, job_id))
    assert nodes["postprocess_video"]["status"] == "completed"


async def test_a_zero_time_node_publishes_every_progress_step_rising(redis_client, bridge, start_worker, job_id):
    steps = Simulator(0.0).steps
    await start_worker()
    async with JobChannels(redis_client, bridge, job_id) as channels:
        await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
        seen = await channels.until(count("data", 3))
    values = progress_values(seen)
    assert len(values) == 3 * steps and values == sorted(values) and len(set(values)) == len(values)
    # Each node's steps come before its output.
    kinds = [kind for kind, *_ in seen if kind != "status"]
    assert kinds == (["progress"] * steps + ["data"]) * 3


async def test_the_handback_and_its_ack_are_one_round_trip(redis_url, redis_client, bridge, start_worker):
    """One script: the XADD of the handback, then the XACK of the segment's entry."""
    job_id = str(uuid.uuid4())
    relevant = ("EVAL", f"XADD {bridge.control_stream}", f"XACK {bridge.data_stream}")
    commands: list[tuple[str, str]] = []  # (who ran it: "lua" inside a script, command)
    monitor_client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with monitor_client.monitor() as monitor:
            await start_worker()
            entry_id = await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
            async with asyncio.timeout(TIMEOUT):
                while not commands or not commands[-1][1].startswith("XACK"):
                    seen = await monitor.next_command()
                    if seen["command"].startswith(relevant):
                        commands.append((seen["client_type"], seen["command"]))
    finally:
        await monitor_client.aclose()
    (_, script), (by_xadd, xadd), (by_xack, xack) = commands[-3:]
    assert script.startswith("EVAL") and by_xadd == by_xack == "lua", commands
    assert xadd.startswith(f"XADD {bridge.control_stream}") and job_id in xadd
    assert xack == f"XACK {bridge.data_stream} {bridge.workers_group} {entry_id}"


async def test_a_handback_that_cannot_be_written_leaves_its_entry_pending(redis_client, bridge, start_worker, job_id):
    """Never acked without its handback: the entry stays pending, for this worker's retry or a taker-over."""
    await redis_client.set(bridge.control_stream, "not a stream")  # every XADD to it fails (WRONGTYPE)
    await start_worker()
    async with JobChannels(redis_client, bridge, job_id) as channels:
        entry_id = await push(redis_client, bridge, job_id, pipeline_graph(job_id, "sadtalker"))
        await channels.until(count("data", 3))  # every node ran; the handback comes next
    await asyncio.sleep(0.5)
    pending = await redis_client.xpending_range(bridge.data_stream, bridge.workers_group, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [entry_id]
