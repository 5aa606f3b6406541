"""`spinbot`: one command per process role, plus `dev` for the whole stack on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
import uvloop
from temporalio.service import RPCError

from core.contracts import ConfigError, contracts
from core.logs import setup_logging
from core.metrics import serve_metrics
from core.settings import settings
from spinbot.cli_jobs import register_job_commands
from spinbot.priority import BATCH_NICE

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MySpinBot control plane on Temporal.")
register_job_commands(app)


def _start(role: str, temporal: bool = False):
    """Validate settings and every config file (and, for `temporal` roles, the Temporal client configuration)
    before doing anything; stop with a clear message if broken."""
    from core.planner import check_templates
    from core.temporal import connect_options

    try:
        config = settings()
        check_templates(contracts(), config.llm_defaults)
        if temporal:
            connect_options(config.temporal_address, config.temporal_namespace)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"settings error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(role, config.log_format)
    return config


def _freeze_startup_heap() -> None:
    """What a role has imported and built by now lives as long as the process: keep it out of every later
    collection. A full collection otherwise walks all of it (the API's took 70-100 ms on this machine, every
    request and WebSocket push waiting), for nothing it could ever free."""
    gc.collect()
    gc.freeze()


def _run(coro, serving: bool = True):
    """Run a role until it ends or Ctrl-C; an unreachable dependency is a clear message, not a traceback.
    `serving`: this runs the role itself (its start-up heap is frozen first), not a step before it."""
    if serving:
        _freeze_startup_heap()
    try:
        # uvloop, as uvicorn runs the API: the Temporal SDK's threads wake the loop for every task they hand over,
        # and uvloop coalesces those wake-ups instead of writing a byte to the self-pipe for each.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except KeyboardInterrupt:
        return None
    except (OSError, asyncpg.PostgresError, RuntimeError, RPCError) as exc:
        typer.echo(f"cannot start: {type(exc).__name__}: {exc}", err=True)
        _exit_now(1)


def _exit_now(code: int) -> None:
    """Leave without interpreter finalization. A role that could not start has nothing to clean up, and the
    Temporal client's native threads may still call into Python while the interpreter finalizes, which
    aborts the process (SIGABRT, "PyGILState_Release ... must be current") instead of exiting with `code`."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


async def _ensure_search_attributes(client) -> None:
    """Register spinbot's search attributes in the namespace if missing; where forbidden, stop naming them."""
    from core.search_attributes import ensure_search_attributes

    added = await ensure_search_attributes(client)
    if added:
        logging.getLogger("spinbot").info("registered search attributes %s in Temporal", ", ".join(added))


async def _prepare_api(config) -> None:
    from core.migrate import migrate_url
    from core.temporal import connect

    await migrate_url(config.database_url)
    await _ensure_search_attributes(await connect(config.temporal_address, config.temporal_namespace))


@app.command()
def migrate():
    """Apply pending database migrations."""
    from core.migrate import migrate_url

    config = _start("migrate")
    applied = _run(migrate_url(config.database_url, timeout=10), serving=False)
    typer.echo(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


@app.command()
def api(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None):
    """Serve the REST + WebSocket API."""
    import uvicorn

    from api.app import create_app
    from spinbot.http_server import server_config

    config = _start("api", temporal=True)
    _run(_prepare_api(config), serving=False)  # the API serves under uvicorn, below
    server = uvicorn.Server(
        server_config(
            create_app(config),
            config,
            host or config.api_host,
            port or config.api_port,
            log_level="warning",
            log_config=None,  # uvicorn logs through our handler and format (core/logs.py)
            ws_ping_interval=20,
            ws_ping_timeout=20,
        )
    )
    _freeze_startup_heap()
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # e.g. the port is taken: uvicorn logged why
        raise typer.Exit(3)


@app.command()
def worker(
    workflows: Annotated[bool, typer.Option("--workflows", help="Poll the workflow task queue")] = False,
    activities: Annotated[bool, typer.Option("--activities", help="Poll node-plane activity queues")] = False,
    queue: Annotated[list[str] | None, typer.Option(help="Only these activity queues")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port for this worker's own metrics (jobs, nodes)")] = None,
    sdk_metrics_port: Annotated[
        int | None,
        typer.Option(help="Port for the Temporal SDK's Prometheus metrics (default: SPINBOT_WORKER_METRICS_PORT)"),
    ] = None,
):
    """Run Temporal workers (both kinds when neither flag is given)."""
    from core.temporal import connect, make_runtime
    from spinbot.worker import WorkerRoles, running_workers

    config = _start("worker", temporal=True)
    both = not workflows and not activities
    roles = WorkerRoles(workflows=workflows or both, activities=activities or both, queues=tuple(queue or ()))

    serve_metrics(metrics_port, config.metrics_host, "worker")

    async def main():
        runtime = make_runtime(sdk_metrics_port or config.worker_metrics_port, config.metrics_host)
        client = await connect(config.temporal_address, config.temporal_namespace, runtime)
        await _ensure_search_attributes(client)
        stopped = asyncio.Event()
        async with running_workers(client, config, roles, stopped):
            await stopped.wait()
        # A worker that stops polling must take the process down, so that it is restarted, not left idle.
        raise RuntimeError("a Temporal worker stopped (see the log above); exiting")

    _run(main())


@app.command()
def relay(
    metrics_port: Annotated[
        int | None, typer.Option(help="Port for the relay's metrics (handoffs, dead letters)")
    ] = None,
):
    """Relay handbacks to workflows and pub/sub events to Redis keys and PostgreSQL."""
    from core.temporal import connect
    from handoff.service import run_relay

    config = _start("relay", temporal=True)
    serve_metrics(metrics_port, config.metrics_host, "relay")

    async def main():
        client = await connect(config.temporal_address, config.temporal_namespace)
        await _ensure_search_attributes(client)  # its search for stranded jobs asks visibility by JobStatus
        await run_relay(config, client)

    _run(main())


@app.command()
def dataplane(
    simulate: Annotated[
        bool, typer.Option("--simulate/--no-simulate", help="Serve python-plane services with a SIMULATOR")
    ] = False,
    sim_seconds: Annotated[float, typer.Option(help="Simulated duration of each node")] = 2.0,
    handback_failures: Annotated[
        bool, typer.Option(help="Hand failed graphs back instead of the existing worker's way")
    ] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Port for this worker's metrics (dead letters)")] = None,
):
    """The reference data-plane worker (consumer group `workers` on process:data)."""
    from handoff.dataplane import run_dataplane

    config = _start("dataplane")
    serve_metrics(metrics_port, config.metrics_host, "dataplane")
    _run(run_dataplane(config, simulate=simulate, sim_seconds=sim_seconds, handback_failures=handback_failures))


@app.command()
def health(
    url: Annotated[
        str | None, typer.Option(help="What to ask; default: the API on this host, /ready (SPINBOT_API_PORT)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer")] = 3.0,
):
    """Exit 0 when URL answers 2xx, else 1 with one line why: the container healthcheck of every role."""
    import urllib.error
    import urllib.request

    if url is None:
        try:
            url = f"http://127.0.0.1:{settings().api_port}/ready"
        except ValueError as exc:
            typer.echo(f"settings error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # non-2xx raises HTTPError
            pass
    except urllib.error.HTTPError as exc:
        typer.echo(f"unhealthy: {url}: HTTP {exc.code} {exc.read(200).decode(errors='replace')}", err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, malformed URL
        typer.echo(f"unhealthy: {url}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"healthy: {url}")


@app.command()
def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where Temporal, Redis, PostgreSQL and objects keep their data")
    ] = Path(".data"),
    api_port: Annotated[int, typer.Option()] = 3000,
    redis_port: Annotated[int, typer.Option()] = 6379,
    temporal_port: Annotated[int, typer.Option()] = 7233,
    ui_port: Annotated[int, typer.Option()] = 8233,
    no_dataplane: Annotated[
        bool, typer.Option("--no-dataplane", help="Attach another data-plane worker instead")
    ] = False,
    simulate: Annotated[
        bool, typer.Option("--simulate/--no-simulate", help="Reference worker simulates generation")
    ] = True,
    sim_seconds: Annotated[float, typer.Option(help="Simulated duration of each python node")] = 2.0,
    metrics_port: Annotated[int, typer.Option(help="First of three metrics ports: worker, Temporal SDK, relay")] = 9464,
    batch_nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            envvar="SPINBOT_BATCH_NICE",
            help="How much lower the roles that run jobs are scheduled than the API",
        ),
    ] = BATCH_NICE,
):
    """Everything on one machine: Temporal, Redis, PostgreSQL, API, workers, relay, data plane."""
    from spinbot.dev import DevOptions, run_dev

    _start("dev")
    options = DevOptions(
        data_dir.resolve(),
        api_port,
        redis_port,
        temporal_port,
        ui_port,
        not no_dataplane,
        simulate,
        sim_seconds,
        metrics_port,
        batch_nice,
    )
    raise typer.Exit(run_dev(options))
