"""deploy/grafana/dashboards/spinbot.json shows every metric we export, and asks only for series and labels that
exist: ours from core/metrics.py, the Temporal SDK's scraped from a real worker that ran a workflow."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import core.metrics
from core.temporal import make_runtime
from spinbot.ports import free_port
from tests.deployment import ROOT

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "spinbot.json").read_text())
PROMETHEUS_LABELS = {"le", "instance", "job"}  # added by Prometheus or the histogram itself
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def our_metrics() -> dict[str, MetricWrapperBase]:
    return {m._name: m for m in vars(core.metrics).values() if isinstance(m, MetricWrapperBase)}


def our_series() -> dict[str, set[str]]:
    """Series name → label names, for every metric core/metrics.py defines."""
    return {
        name + suffix: set(metric._labelnames)
        for name, metric in our_metrics().items()
        for suffix in SUFFIXES[str(metric._type)]
    }


def referenced(expr: str) -> list[tuple[str, set[str]]]:
    """The series an expression reads, each with the labels it groups or filters it by."""
    found = []
    for match in re.finditer(r"\b((?:spinbot|http|websocket|temporal)_\w+)\b(\{[^}]*\})?", expr):
        labels = set(re.findall(r"(\w+)\s*=~?", match.group(2) or ""))
        found.append((match.group(1), labels))
    grouped = set(re.findall(r"by \(([^)]*)\)", expr))
    by = {label.strip() for group in grouped for label in group.split(",")}
    return [(name, labels | by) for name, labels in found]


def test_panels_are_well_formed():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_every_metric_we_export_is_on_the_dashboard():
    shown = " ".join(expressions())
    missing = [name for name in our_metrics() if not re.search(rf"\b{name}(_total|_bucket|_count|_sum)?\b", shown)]
    assert not missing, f"add panels to deploy/grafana/dashboards/spinbot.json for {missing}"


def test_our_series_and_labels_on_the_dashboard_exist():
    series = our_series()
    for expr in expressions():
        for name, labels in referenced(expr):
            if name.startswith("temporal_"):
                continue
            assert name in series, f"{name} is not exported ({expr})"
            assert labels - PROMETHEUS_LABELS <= series[name], f"{name} has no label(s) {labels - series[name]}"


@activity.defn(name="dashboard_ok")
async def dashboard_ok() -> str:
    return "ok"


@activity.defn(name="dashboard_fail")
async def dashboard_fail() -> str:
    raise ApplicationError("failing on purpose, for the failure metrics", non_retryable=True)


@workflow.defn(name="DashboardProbe")
class DashboardProbe:
    @workflow.run
    async def run(self) -> None:
        timeout = timedelta(seconds=10)
        await workflow.execute_activity(dashboard_ok, start_to_close_timeout=timeout)
        await workflow.execute_activity(
            dashboard_fail, start_to_close_timeout=timeout, retry_policy=RetryPolicy(maximum_attempts=1)
        )


@pytest.fixture(scope="module")
async def sdk_series(services) -> dict[str, set[str]]:
    """Series name → label names the Temporal SDK exported after a worker ran a workflow that failed an activity."""
    port = free_port()
    client = await Client.connect(services.temporal_address, runtime=make_runtime(port))
    queue = f"dashboard-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[DashboardProbe],
        activities=[dashboard_ok, dashboard_fail],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                DashboardProbe.run, id=queue, task_queue=queue, execution_timeout=timedelta(seconds=30)
            )
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"(\w+)(?:\{(.*)\})? ", line)
        if match:
            series.setdefault(match.group(1), set()).update(re.findall(r'(\w+)="', match.group(2) or ""))
    return series


async def test_temporal_sdk_series_and_labels_on_the_dashboard_exist(sdk_series):
    for expr in expressions():
        for name, labels in referenced(expr):
            if name.startswith("temporal_"):
                assert name in sdk_series, f"the SDK exports no {name} ({expr})"
                assert labels - PROMETHEUS_LABELS <= sdk_series[name], f"{name} has no label(s) {labels}"
