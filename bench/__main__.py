"""`make bench`: one run of a real `spinbot dev` stack, everything side by side, ending with one JSON line.

Phases, in order: planning a 500-node graph (in this process); then against the stack, side by side with the
bare-Temporal floor shaped like a sadtalker job's history (on the same server, its workflows timed between our jobs):
sadtalker latency paced (each in turn with a floor workflow) and back to back; rounds of queued sadtalker jobs, with
GET /api/status timed meanwhile, in turn with rounds of queued floor workflows; WebSocket fan-out to 100, then to
1,000 clients; a 200-node job's history. Then a soak on a fresh stack.
Run: `make bench` or `.venv/bin/python -m bench [--soak 200 --ws-clients 100]` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from temporalio.client import Client

from bench.floor import floor_workers, shape_of_finished
from bench.load import Finished, api_client, finished_jobs, measure_load, run_one
from bench.report import Report
from bench.sizes import history_of_job, plan_ms
from bench.soak import soak
from bench.stack import BenchStack, bench_stack
from bench.tables import add_history, add_load, add_plan, add_soak, add_ws
from bench.ws import measure_ws


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=60, help="jobs (and floor workflows) queued at once")
    parser.add_argument("--runs", type=int, default=20, help="jobs timed one at a time, paced and back to back")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of queued jobs, ours and the floor's in turn")
    parser.add_argument("--ws-clients", type=int, default=1000, help="WebSocket clients (0: skip)")
    parser.add_argument("--ws-jobs", type=int, default=10, help="running jobs the clients' subscriptions spread over")
    parser.add_argument("--history-nodes", type=int, default=200, help="nodes of the history job (0: skip)")
    parser.add_argument("--soak", type=int, default=2000, help="jobs in the soak (0: skip)")
    parser.add_argument(
        "--retention-window",
        type=float,
        default=0.0,
        help="seconds after which acked stream entries, finished jobs' keys and events go (0: the shipped settings)",
    )
    return parser.parse_args(argv)


def retention_env(window: float) -> dict[str, str]:
    """Settings that shorten every retention window to `window` seconds, cleaned up every second."""
    return {
        "SPINBOT_STREAM_RETENTION_SECONDS": str(window),
        "SPINBOT_FINISHED_KEY_SECONDS": str(max(1, round(window))),
        "SPINBOT_RETENTION_HOURS": str(window / 3600),
        "SPINBOT_CLEANUP_INTERVAL_SECONDS": "1",
    }


async def phase(report: Report, name: str, work, add) -> None:
    """One phase's figures into the report; a phase that fails is named in the notes, its figures left null."""
    say(name)
    try:
        add(report, await work)
    except Exception as exc:
        report.notes.append(f"{name}: failed with {type(exc).__name__}: {exc}")
        say(f"{name}: failed with {type(exc).__name__}: {exc}")


async def fan_out(stack: BenchStack, finished: Finished, clients: int, jobs: int) -> tuple:
    """The fan-out with `clients`, after the same with a tenth of them (at least 100) to read it against."""
    few = max(100, clients // 10)
    reference = await measure_ws(stack, finished, few, jobs) if clients > few else None
    return reference, await measure_ws(stack, finished, clients, jobs)


async def measure(stack: BenchStack, args: argparse.Namespace, report: Report) -> None:
    async with finished_jobs(stack.redis_url) as finished:
        async with api_client(stack.api_url) as api:
            job_id, _ = await run_one(api, finished)
        temporal = await Client.connect(stack.temporal_address)
        shape = await shape_of_finished(temporal.get_workflow_handle(job_id))
        say(f"one sadtalker job's history: {shape.describe()}")

        async def load_and_floor() -> tuple:
            async with floor_workers(stack.temporal_address, shape) as floor:
                load, floor_figures = await measure_load(
                    stack.api_url, finished, floor, args.queued, args.runs, args.rounds
                )
            return load, floor_figures, shape

        name = (
            f"side by side with the floor (bare workflows of that shape): {args.runs} paced each in turn,"
            f" {args.runs} back to back, then {args.rounds} rounds each of {args.queued} queued, in turn"
        )
        await phase(report, name, load_and_floor(), lambda r, found: add_load(r, *found))
        if args.ws_clients:
            name = f"WebSocket fan-out: {args.ws_clients} clients over {args.ws_jobs} running jobs"
            await phase(report, name, fan_out(stack, finished, args.ws_clients, args.ws_jobs), add_ws)
        if args.history_nodes:
            history = history_of_job(stack.api_url, stack.temporal_address, finished, args.history_nodes)
            await phase(report, f"a {args.history_nodes}-node job's history", history, add_history)


async def measure_soak(stack: BenchStack, args: argparse.Namespace, report: Report) -> None:
    async with finished_jobs(stack.redis_url) as finished:
        soaking = soak(stack.api_url, stack.redis_url, stack.database_url, finished, args.soak, args.retention_window)
        await phase(report, f"soak: {args.soak} jobs", soaking, add_soak)


def main(argv: list[str] | None = None) -> None:
    args = options(argv)
    report = Report()
    say("planning a 500-node graph")
    add_plan(report, *plan_ms())
    say("starting spinbot dev")
    with bench_stack() as stack:
        asyncio.run(measure(stack, args, report))
    if args.soak:
        # On a fresh stack: what the other phases left would expire during the soak and blur what it adds.
        say("starting a fresh spinbot dev for the soak")
        with bench_stack(retention_env(args.retention_window) if args.retention_window else None) as stack:
            asyncio.run(measure_soak(stack, args, report))
    report.print("MySpinBot on `spinbot dev`: sadtalker jobs, zero-time simulated data plane (one run, this machine)")


if __name__ == "__main__":
    main()
