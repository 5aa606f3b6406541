"""`spinbot follow`: a live progress bar fed by the WebSocket, and a line per node as it finishes."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from spinbot.cli_errors import EXIT_BAD_REQUEST, CliError
from workflows.status import JobStatus, NodeStatus

if TYPE_CHECKING:
    from spinbot.client import SpinbotClient  # loaded by the command that connects (spinbot.cli_jobs.connect)

NODE_MARK = {NodeStatus.COMPLETED: "[green]✓[/]", NodeStatus.FAILED: "[red]✗[/]", NodeStatus.SKIPPED: "[yellow]-[/]"}
FINAL_GRAPH_WAIT = 5.0  # seconds the recorded graph may lag the pushed status


def node_line(node: dict, elapsed: float | None = None, detail: str = "") -> str:
    """`✓ script (Write script) completed +0.4s`, then `detail` (markup), then the error of a failed node."""
    status = node.get("status", "?")
    mark = NODE_MARK.get(status, "[dim]·[/]")
    name = f" ({escape(node['name'])})" if node.get("name") else ""
    line = f"{mark} {escape(node['id'])}{name} {status}"
    if elapsed is not None:
        line += f" [dim]+{elapsed:.1f}s[/]"
    line += detail
    error = node.get("error") or {}
    if status == NodeStatus.FAILED and error.get("message"):
        line += f": {escape(str(error['message']))}"
    return line


def failure_line(job_id: str, error: dict | None) -> str:
    error = error or {}
    where = f"node {error['nodeId']}" if error.get("nodeId") else "the job"
    code = f" ({error['code']})" if error.get("code") else ""
    return f"job {job_id} failed at {where}: {error.get('message', 'failed')}{code}"


def _graph_nodes(client: SpinbotClient, job_id: str, final: str | None) -> list[dict]:
    """Node states now: the workflow's live graph while it runs; the recorded graph once it has ended."""
    if final is None:
        try:
            return client.live_graph(job_id)["graph"]["nodes"]
        except CliError:
            pass  # no workflow to ask (yet): the recorded graph is the next best
    deadline = time.monotonic() + (FINAL_GRAPH_WAIT if final else 0)
    while True:
        job = client.job(job_id)["job"]
        if final is None or job["status"] == final or time.monotonic() > deadline:
            return (job.get("lastGraph") or {}).get("nodes") or []
        time.sleep(0.1)


def follow_job(client: SpinbotClient, job_id: str, console: Console) -> int:
    """Follow a job to its end; 0 when it completed, 1 when it failed (the failing node printed)."""
    client.status(job_id)  # an unknown job or a refused key is a clear error before any waiting
    started = time.monotonic()
    reported: set[str] = set()
    seen: tuple[str, float] | None = None
    last: dict = {}
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar, contextlib.closing(client.updates(job_id)) as updates:
        task = bar.add_task(f"{job_id[:8]} waiting", total=1.0)
        for last in updates:
            status, progress = last["status"], float(last["progress"])
            if status == "not_found":
                raise CliError(f"job {job_id} not found", EXIT_BAD_REQUEST)
            bar.update(task, completed=progress, description=f"{job_id[:8]} {status}")
            finished = status in (JobStatus.COMPLETED, JobStatus.FAILED)
            if seen == (status, progress) and not finished:
                continue
            seen = (status, progress)
            for node in _graph_nodes(client, job_id, status if finished else None):
                if node.get("status") in NODE_MARK and node["id"] not in reported:
                    reported.add(node["id"])
                    bar.console.print(node_line(node, time.monotonic() - started))
            if finished:
                break
    took = time.monotonic() - started
    if last.get("status") == JobStatus.COMPLETED:
        console.print(f"[green]job {job_id} completed[/] in {took:.1f}s")
        return 0
    error = last.get("error") or client.status(job_id).get("error")
    console.print(f"[red]{escape(failure_line(job_id, error))}[/]", soft_wrap=True)
    return 1
