"""Each role exports only its own metric families; the API adds the data plane's backlog; /metrics may stay open."""

from __future__ import annotations

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import role_registry
from tests.e2e import BRIDGE, wait_for
from tests.stack import api_replica


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_each_role_exports_only_its_own_families():
    exported = {role: families(generate_latest(role_registry(role)).decode()) for role in ("api", "worker", "relay")}
    assert "http_requests" in exported["api"] and "http_requests" not in exported["worker"]
    assert "spinbot_handbacks" in exported["relay"] and "spinbot_handbacks" not in exported["api"]
    assert (
        "spinbot_node_duration_seconds" in exported["worker"]
        and "spinbot_node_duration_seconds" not in exported["relay"]
    )
    assert "websocket_clients_connected" not in exported["relay"]
    for role in exported.values():  # each process still says what it costs
        assert "process_resident_memory_bytes" in role


async def test_the_api_reports_the_data_planes_backlog(stack):
    async def consumers():
        groups = {g["name"]: g for g in await stack.redis.xinfo_groups(BRIDGE.data_stream)}
        return groups.get(BRIDGE.workers_group, {}).get("consumers")

    # A test before may have restarted the stack's worker, which joins its group again at its first read.
    await wait_for(consumers, what="the stack's data-plane worker in its group")
    reply = await stack.api.get("/metrics")
    found = families(reply.text)
    samples = {s.name: s.value for name in found for s in found[name].samples}
    assert samples["spinbot_data_stream_entries"] == await stack.redis.xlen(BRIDGE.data_stream)
    assert samples["spinbot_events_backlog_entries"] == await stack.redis.xlen(BRIDGE.events_backlog)
    groups = {g["name"]: g for g in await stack.redis.xinfo_groups(BRIDGE.data_stream)}
    assert samples["spinbot_data_stream_consumers"] == groups[BRIDGE.workers_group]["consumers"]
    assert (
        "spinbot_data_stream_pending_entries" in samples and samples["spinbot_data_stream_oldest_pending_seconds"] >= 0
    )
    assert "spinbot_handoff_round_trip_seconds_count" not in samples


async def test_metrics_can_be_open_while_the_api_needs_keys(stack):
    settings = stack.settings.model_copy(update={"api_keys": ["secret"], "metrics_public": True})
    async with api_replica(settings, stack.temporal) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/api/jobs")).status_code == 401
    closed = stack.settings.model_copy(update={"api_keys": ["secret"]})
    async with api_replica(closed, stack.temporal) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer secret"})).status_code == 200
