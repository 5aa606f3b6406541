"""The benchmark's modules run against a real stack (at tiny sizes; the figures are `make bench`'s business, and
nothing here is timed)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from bench.floor import floor_workers, shape_of
from bench.hops import HOPS, OURS_ONLY, TOGETHER, measure_hops, table
from bench.http_probe import KEEPALIVE_EXPIRY, ApiClient
from bench.llm_peer import LlmPeer
from bench.load import api_client, finished_jobs, measure_load, run_one
from bench.load import submit as submit_over_http
from bench.report import KEYS, Report
from bench.sizes import plan_ms
from bench.soak import soak
from bench.tables import add_load, add_plan
from bench.ws_client import BenchClient
from bench.ws_group import update_of
from tests.e2e import submit
from workflows.status import JobStatus

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x"}}}


async def test_the_bench_counts_a_job_runs_its_floor_and_prints_one_json_line(stack, llm, capsys):
    async with finished_jobs(stack.settings.redis_url) as finished:
        async with api_client(stack.api_url) as api:
            job_id, _ = await run_one(api, finished)
        shape = shape_of(await stack.temporal.get_workflow_handle(job_id).fetch_history())
        # A sadtalker job: the script activity, a sync per state change, the data plane's handback with its timer.
        assert shape.activities == 1 and shape.signals == 1 and shape.timers == 1, shape
        assert shape.local_activities >= shape.signals, shape
        async with floor_workers(stack.settings.temporal_address, shape) as side:
            load, floor = await measure_load(stack.api_url, finished, side, queued=3, runs=2, rounds=2)
    assert load.failed == 0 and len(load.paced) == len(load.back_to_back) == 2
    assert load.status_lookups and load.health_lookups
    assert load.jobs_per_s > 0 and load.rounds == 2
    assert floor.jobs_per_s > 0 and len(floor.paced) == 2  # one after each of our paced jobs

    report = Report()
    add_load(report, load, floor, shape)
    add_plan(report, *plan_ms(nodes=20, rounds=1))
    report.print("smoke")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert list(figures) == list(KEYS)
    assert figures["jobs_per_s"] > 0 and figures["floor_jobs_per_s"] > 0 and figures["plan_500_ms"] > 0
    assert figures["floor_latency_p50_ms"] > 0 and figures["health_p99_ms"] > 0
    assert figures["ws_clients"] is None  # that phase did not run


async def test_the_bench_soak_runs_its_jobs_and_reads_what_they_leave_in_redis_and_postgresql(stack, llm):
    async with finished_jobs(stack.settings.redis_url) as finished:
        figures = await soak(stack.api_url, stack.settings.redis_url, stack.settings.database_url, finished, 4, 0.0)
    assert (figures.jobs, figures.failed) == (4, 0)
    # Growth, read before and after: either may be 0 or less for four jobs (free space in pages, keys expiring).
    sizes = (figures.redis_bytes, figures.table_bytes, figures.database_bytes)
    assert all(isinstance(size, int) for size in sizes) and figures.seconds > 0


async def test_the_bench_http_client_keeps_a_few_connections_and_says_what_the_api_refused(stack, llm):
    """bench.http_probe's ApiClient, which submits the bench's jobs: requests beyond its connections wait for one,
    connections are reused, an error answer is returned as is (submit raises on it), and a request after the
    keep-alive expiry opens a fresh connection instead of racing the server's close."""
    async with ApiClient(stack.api_url, connections=2) as api:
        jobs = await asyncio.gather(*(submit_over_http(api) for _ in range(6)))
        assert len({job_id for job_id, _ in jobs}) == 6 and api.opened == 2
        status, body = await api.post_json("/api/jobs", {"mode": "fixed_graph", "variant": "nope"})
        assert status == 400 and "error" in json.loads(body)
        with pytest.raises(RuntimeError, match="400"):
            await submit_over_http(api, {"mode": "nope"})
        status, _ = await api.request("GET", "/health")
        assert status == 200 and api.opened == 2
        for connection in api.idle:
            connection.used_at -= KEEPALIVE_EXPIRY + 1  # as if idle that long
        kept = [connection.streams for connection in api.idle]
        status, _ = await api.request("GET", "/health")
        assert status == 200 and all(streams is not None for streams in kept)
        assert any(connection.streams not in kept for connection in api.idle)  # that one was opened again


async def test_the_bench_websocket_client_sees_a_job_from_its_state_to_completed(stack, llm):
    """bench.ws_client, the light client the fan-out phase runs a thousand of, against the real API."""
    llm.delay = 0.5
    client = await BenchClient.connect(stack.api_url, timeout=10)
    try:
        job_id = await submit(stack, SADTALKER)
        state = client.expect(job_id, update_of(job_id))
        completed = client.expect(JobStatus.COMPLETED, update_of(job_id, JobStatus.COMPLETED))
        client.send({"action": "subscribe", "jobId": job_id})
        (at_state, current), (at_end, final) = await asyncio.wait_for(asyncio.gather(state, completed), 30)
        assert not JobStatus(current["status"]).finished and final["status"] == JobStatus.COMPLETED, (current, final)
        assert at_state < at_end <= time.perf_counter()
        unknown = client.expect("nope", update_of("nope"))
        client.send({"action": "subscribe", "jobId": "nope"})
        _, answer = await asyncio.wait_for(unknown, 10)
        assert answer["status"] == "not_found"
    finally:
        client.close()
    with pytest.raises(ConnectionError):  # a refused handshake is a clear error, not a hang
        await BenchClient.connect(stack.api_url + "/nowhere", timeout=10)


async def test_the_hops_of_a_paced_job_add_up_to_its_whole_time(stack, llm):
    ours, floor = await measure_hops(stack.api_url, stack.settings.temporal_address, stack.settings.redis_url, jobs=2)
    *steps, (whole, _, _) = HOPS
    for hops in (ours, floor):
        for job in range(2):
            parts = [hops[label][job] for label, _, _ in steps if label in hops]
            # One machine's clocks at millisecond resolution: a hop can read a millisecond below zero.
            assert all(part > -2 for part in parts), parts
            if hops is ours:
                assert sum(parts) == pytest.approx(hops[whole][job]) and hops[whole][job] > 0
    # The floor has every hop but the three of our hand-off, which it has as one (its local activity signals).
    (together, _, _), *_ = TOGETHER
    assert set(floor) == {label for label, _, end in HOPS if end not in OURS_ONLY} | {together}
    assert all(len(values) == 2 and values[0] > -2 for values in floor.values()) and floor[whole][0] > 0
    missing = [label for label, _, _ in steps if label not in floor]
    for job in range(2):  # the floor's steps add up to its whole too, with its hand-off as one step
        parts = [floor[label][job] for label, _, _ in steps if label in floor] + [floor[together][job]]
        assert sum(parts) == pytest.approx(floor[whole][job]), (missing, parts)
    table(ours, floor)  # prints what it measured, a floor column beside ours


async def test_the_bench_llm_peer_answers_like_ollama_from_a_process_of_its_own_and_holds_when_told():
    with LlmPeer() as peer:
        async with httpx.AsyncClient() as client:
            body = {"model": "m", "prompt": "p", "temperature": 0.7, "stream": False}
            reply = (await client.post(f"{peer.url}/api/generate", json=body, timeout=10)).json()
            assert reply["done"] and json.loads(reply["response"])["narration"]
            assert await peer.requests() == 1
            await peer.hold(0.3)
            started = time.monotonic()
            await client.post(f"{peer.url}/api/generate", json=body, timeout=10)
            assert time.monotonic() - started >= 0.3, "the reply was held"
            await peer.hold(0.0)
        assert await peer.requests() == 2
        assert peer.process.poll() is None, "serving in a process of its own"
    assert peer.process.poll() is not None, "stopped when the bench let go of it"
