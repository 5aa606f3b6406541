"""How the CLI shows jobs, graphs, pipelines and capabilities (rich tables and trees)."""

from __future__ import annotations

from datetime import datetime

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from spinbot.follow import failure_line, node_line
from workflows.status import JobStatus

STATUS_STYLE: dict[str, str] = {JobStatus.COMPLETED: "green", JobStatus.FAILED: "red", JobStatus.RUNNING: "cyan"}


def when(millis: int | str | None) -> str:
    if millis is None:
        return "?"
    return datetime.fromtimestamp(int(millis) / 1000).strftime("%Y-%m-%d %H:%M:%S")


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def duration(node: dict) -> str | None:
    """The node's run time when its telemetry says (durationMs, durationSeconds, or startedAt/finishedAt)."""
    telemetry = node.get("telemetry") or {}
    try:
        if isinstance(telemetry.get("durationMs"), (int, float)):
            return f"{telemetry['durationMs'] / 1000:.1f}s"
        if isinstance(telemetry.get("durationSeconds"), (int, float)):
            return f"{telemetry['durationSeconds']:.1f}s"
        if telemetry.get("startedAt") and telemetry.get("finishedAt"):
            started = datetime.fromisoformat(str(telemetry["startedAt"]).replace("Z", "+00:00"))
            finished = datetime.fromisoformat(str(telemetry["finishedAt"]).replace("Z", "+00:00"))
            return f"{(finished - started).total_seconds():.1f}s"
    except (TypeError, ValueError):
        return None
    return None


def jobs_table(body: dict) -> Table:
    jobs, pagination = body["jobs"], body["pagination"]
    total = pagination.get("total")
    shown = f"{len(jobs)} of {total}" if total is not None else str(len(jobs))
    table = Table(title=f"jobs ({shown}, newest first)", title_justify="left")
    for column in ("job", "status", "progress", "pipeline", "created"):
        table.add_column(column, justify="right" if column == "progress" else "left", no_wrap=column == "job")
    for job in jobs:
        progress = f"{100 * float(job['progress']):.0f}%"
        pipeline = escape(str(job.get("pipeline") or ""))
        table.add_row(job["jobId"], styled(job["status"]), progress, pipeline, when(job["created"]))
    return table


def job_tree(job: dict, artifacts: list[dict], error: dict | None) -> Tree:
    """The job as a tree: one branch per node (status, duration, error), its artifacts under it."""
    graph = job.get("lastGraph") or {}
    pipeline = escape(str((graph.get("context") or {}).get("pipeline") or "?"))
    head = (
        f"[bold]{job['jobId']}[/] {styled(job['status'])} {100 * float(job['progress']):.0f}%  "
        f"pipeline {pipeline}  created {when(job['created'])}"
    )
    tree = Tree(head)
    if job["status"] == JobStatus.FAILED:
        tree.add(f"[red]{escape(failure_line(job['jobId'], error))}[/]")
    by_node: dict[str, list[dict]] = {}
    for artifact in artifacts:
        by_node.setdefault(artifact["nodeId"], []).append(artifact)
    for node in graph.get("nodes") or []:
        took = duration(node)
        detail = f" [dim]{escape(node.get('service', ''))} on {node.get('plane', '?')} plane[/]"
        if took:
            detail += f" in {took}"
        branch = tree.add(node_line(node, detail=detail))
        for artifact in by_node.get(node["id"], []):
            where = escape(f"{artifact['name']}: {artifact['bucket']}/{artifact['key']}")
            link = artifact.get("url")
            branch.add(f"{where} {escape(link) if link else '[dim](not in object storage)[/]'}")
    return tree


def pipelines_table(body: dict) -> Table:
    table = Table(title="pipelines", title_justify="left")
    for column in ("pipeline", "nodes (weight)", "edges"):
        table.add_column(column)
    for pipeline in body["pipelines"]:
        nodes = "\n".join(
            f"{n['id']} [dim]{n['service']}, {n['plane']}, {pipeline['weights'].get(n['id'], 0):g}[/]"
            for n in pipeline["nodes"]
        )
        edges = "\n".join(f"{e['from']} → {e['to']}" for e in pipeline["edges"])
        table.add_row(escape(pipeline["name"]), nodes, edges)
    return table


def capabilities_table(body: dict) -> Table:
    table = Table(title=f"capabilities (generated {body.get('generatedAt', '?')})", title_justify="left")
    for column in ("id", "plane", "version", "timeout", "label"):
        table.add_column(column)
    for cap in body["capabilities"]:
        timeout = (cap.get("runtime") or {}).get("timeoutSeconds")
        limit = "none" if timeout is None or float(timeout) < 0 else f"{float(timeout):g}s"
        table.add_row(
            escape(str(cap.get("id"))),
            str(cap.get("plane", "?")),
            escape(str(cap.get("version", ""))),
            limit,
            escape(str(cap.get("label", ""))),
        )
    return table
