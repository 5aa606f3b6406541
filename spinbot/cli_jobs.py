"""The CLI's job commands, against the API over HTTP: submit, follow, jobs, show, cancel, retry, and the catalogues."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from spinbot.cli_errors import DEFAULT_API, EXIT_BAD_REQUEST, CliError
from spinbot.render import capabilities_table, job_tree, jobs_table, pipelines_table

if TYPE_CHECKING:
    from spinbot.client import SpinbotClient

ApiUrl = Annotated[str, typer.Option("--api", envvar="SPINBOT_API_URL", help="The API's base URL")]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="SPINBOT_API_KEY", help="Sent as Bearer (and ?key= on /ws)")
]
PIPED_WIDTH = 200
SCRIPT_SERVICE = "llm.generate_script"
JobArg = Annotated[str, typer.Argument(help="A job id, or enough of its start to be unique")]

console = Console(highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = PIPED_WIDTH  # piped or captured: lines and tables are not cut at 80 columns
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line


def connect(api: str, api_key: str | None) -> SpinbotClient:
    """The API client, imported here: every role's process starts through this CLI, and httpx with the WebSocket
    client would add ~7 MB to each of them (the API's RSS is a benchmark figure)."""
    from spinbot.client import SpinbotClient

    return SpinbotClient(api, api_key)


def follow_to_the_end(client: SpinbotClient, job_id: str) -> int:
    from spinbot.follow import follow_job

    return follow_job(client, job_id, console)


def one_line_errors(command: Callable) -> Callable:
    """Every failure leaves as one line on stderr and an exit code, never a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            errors.print(f"[red]error:[/] {escape(exc.message)}")
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return run


def parse_param(text: str) -> tuple[str, str, Any]:
    """NODE.KEY=VALUE; VALUE is read as JSON when it is JSON (numbers, true, objects), else as a string."""
    target, sep, raw = text.partition("=")
    node, dot, key = target.partition(".")
    if not sep or not dot or not node or not key:
        raise CliError(f"--param {text!r}: expected NODE.KEY=VALUE", EXIT_BAD_REQUEST)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return node, key, value


def planning_request(target: str, params: list[str]) -> dict:
    """A pipeline name → fixed_graph; a .json file → its planning request, or process_graph of the graph in it."""
    pairs = [parse_param(p) for p in params]
    path = Path(target)
    if target.endswith(".json") or path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"{target}: cannot read a JSON graph ({exc})", EXIT_BAD_REQUEST) from None
        if not isinstance(doc, dict):
            raise CliError(f"{target}: must hold a JSON object", EXIT_BAD_REQUEST)
        request = doc if "mode" in doc else {"mode": "process_graph", "graph": doc}
        if pairs:
            _merge_into_graph(request, pairs, target)
        return request
    by_node: dict[str, dict] = {}
    for node, key, value in pairs:
        by_node.setdefault(node, {})[key] = value
    return {"mode": "fixed_graph", "variant": target, "params": by_node}


def _merge_into_graph(request: dict, pairs: list[tuple[str, str, Any]], target: str) -> None:
    if request.get("mode") == "fixed_graph":
        for node, key, value in pairs:
            request.setdefault("params", {}).setdefault(node, {})[key] = value
        return
    graph = request.get("graph")
    nodes = {n.get("id"): n for n in graph.get("nodes", []) if isinstance(n, dict)} if isinstance(graph, dict) else {}
    for node, key, value in pairs:
        if node not in nodes:
            raise CliError(f"--param {node}.{key}: {target} has no node {node!r}", EXIT_BAD_REQUEST)
        nodes[node].setdefault("params", {})[key] = value


def set_prompt(client: SpinbotClient, request: dict, prompt: str) -> None:
    """Give every script-writing node `prompt`, where its params do not name one already."""
    if request.get("mode") == "fixed_graph":
        pipelines = {p["name"]: p for p in client.pipelines()["pipelines"]}
        template = pipelines.get(request.get("variant"))
        if template is None:
            known = ", ".join(pipelines)
            raise CliError(f"unknown pipeline {request.get('variant')!r} (known: {known})", EXIT_BAD_REQUEST)
        params = request.setdefault("params", {})
        targets = [params.setdefault(n["id"], {}) for n in template["nodes"] if n["service"] == SCRIPT_SERVICE]
    else:
        graph = request.get("graph")
        graph = graph if isinstance(graph, dict) else {}
        nodes = [n for n in graph.get("nodes", []) if isinstance(n, dict) and n.get("service") == SCRIPT_SERVICE]
        targets = [node.setdefault("params", {}) for node in nodes]
    if not targets:
        raise CliError(f"--prompt: this job has no {SCRIPT_SERVICE} node", EXIT_BAD_REQUEST)
    for params in targets:
        params.setdefault("prompt", prompt)


def submit(
    target: Annotated[str, typer.Argument(help="A pipeline name (see `spinbot pipelines`) or a graph .json file")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NODE.KEY=VALUE (repeatable)")] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help=f"The prompt of every {SCRIPT_SERVICE} node (unless --param sets it)")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the job to its end")] = False,
    api: ApiUrl = DEFAULT_API,
    api_key: ApiKey = None,
):
    """Submit a job; prints its id. With --follow: exit 0 when it completes, 1 when it fails."""
    request = planning_request(target, param or [])
    with connect(api, api_key) as client:
        if prompt is not None:
            set_prompt(client, request, prompt)
        job_id = client.submit(request)["jobId"]
        console.print(job_id)
        if follow:
            raise typer.Exit(follow_to_the_end(client, job_id))


def follow(job: JobArg, api: ApiUrl = DEFAULT_API, api_key: ApiKey = None):
    """Follow a job to its end: a progress bar and a line per node (exit 0 completed, 1 failed)."""
    with connect(api, api_key) as client:
        raise typer.Exit(follow_to_the_end(client, client.resolve(job)))


def jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only jobs of this pipeline")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many (newest first)")] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    lookups: Annotated[bool, typer.Option("--lookups", help="Also list capabilities look-ups")] = False,
    api: ApiUrl = DEFAULT_API,
    api_key: ApiKey = None,
):
    """List jobs, newest first."""
    with connect(api, api_key) as client:
        body = client.jobs(
            status=status, pipeline=pipeline, limit=limit, offset=offset, include="capabilities" if lookups else None
        )
    console.print(jobs_table(body))


def show(job: JobArg, api: ApiUrl = DEFAULT_API, api_key: ApiKey = None):
    """One job as a tree of its nodes: status, duration when known, error, artifacts."""
    with connect(api, api_key) as client:
        job_id = client.resolve(job)
        detail = client.job(job_id)["job"]
        artifacts = client.artifacts(job_id)["artifacts"]
        error = client.status(job_id).get("error") if detail["status"] == "failed" else None
    console.print(job_tree(detail, artifacts, error))


def cancel(job: JobArg, api: ApiUrl = DEFAULT_API, api_key: ApiKey = None):
    """Cancel a running job (it ends `failed`, cancelled)."""
    with connect(api, api_key) as client:
        job_id = client.resolve(job)
        console.print(f"{job_id}: {client.cancel(job_id)['message']}")


def retry(
    job: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the new run to its end")] = False,
    api: ApiUrl = DEFAULT_API,
    api_key: ApiKey = None,
):
    """Run a failed job again: failed and skipped nodes re-run, completed outputs are kept."""
    with connect(api, api_key) as client:
        job_id = client.resolve(job)
        console.print(f"{job_id}: retry {client.retry(job_id)['status']}")
        if follow:
            raise typer.Exit(follow_to_the_end(client, job_id))


def capabilities(api: ApiUrl = DEFAULT_API, api_key: ApiKey = None):
    """Both planes' capabilities (asks the data-plane worker; cached by the API)."""
    with connect(api, api_key) as client:
        console.print(capabilities_table(client.capabilities()))


def pipelines(api: ApiUrl = DEFAULT_API, api_key: ApiKey = None):
    """The pipelines `spinbot submit` accepts by name."""
    with connect(api, api_key) as client:
        console.print(pipelines_table(client.pipelines()))


def register_job_commands(app: typer.Typer) -> None:
    for command in (submit, follow, jobs, show, cancel, retry, capabilities, pipelines):
        app.command(rich_help_panel="Jobs (over the API)")(one_line_errors(command))
