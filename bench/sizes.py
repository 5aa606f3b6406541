"""Costs that grow with a graph's size: planning a 500-node graph, and the history a 200-node job leaves."""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

from temporalio.client import Client, WorkflowHistory

from bench.load import Finished, api_client, submit
from core.contracts import contracts
from core.planner import plan
from core.settings import settings
from tests.graphs import alternating_graph

PLAN_NODES, PLAN_FAN_OUT = 500, 4  # 500 nodes, 1,990 edges


def plan_ms(nodes: int = PLAN_NODES, fan_out: int = PLAN_FAN_OUT, rounds: int = 5) -> tuple[float, int]:
    """(median ms of planning the graph through core.planner, its edge count)."""
    request, spec, config = alternating_graph(nodes, fan_out), contracts(), settings()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        plan(request, str(uuid.uuid4()), spec, config.llm_defaults, config.llm_allowed_endpoints)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, len(request["graph"]["edges"])


@dataclass
class HistoryFigures:
    nodes: int
    bytes: int
    events: int
    runs: int
    seconds: float
    status: str


async def run_histories(client: Client, job_id: str) -> list[tuple[WorkflowHistory, int]]:
    """Every run of a job with its history size as Temporal counts it (describe), the last run first, following
    continue-as-new back to the first run."""
    runs: list[tuple[WorkflowHistory, int]] = []
    run_id = None
    while True:
        handle = client.get_workflow_handle(job_id, run_id=run_id)
        history = await handle.fetch_history()
        size = (await handle.describe()).raw_description.workflow_execution_info.history_size_bytes
        runs.append((history, size))
        run_id = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id or None
        if not run_id:
            return runs


async def history_of_job(
    api_url: str, temporal_address: str, finished: Finished, nodes: int, timeout: float = 900
) -> HistoryFigures:
    started = time.perf_counter()
    async with api_client(api_url) as api:
        job_id, _ = await submit(api, alternating_graph(nodes))
    await finished.wait(job_id, timeout)
    runs = await run_histories(await Client.connect(temporal_address), job_id)
    return HistoryFigures(
        nodes=nodes,
        bytes=sum(size for _, size in runs),
        events=sum(len(history.events) for history, _ in runs),
        runs=len(runs),
        seconds=time.perf_counter() - started,
        status=finished.outcome[job_id],
    )
