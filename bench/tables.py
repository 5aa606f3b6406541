"""Each phase's figures into the report: its JSON keys and its rows, with the goals of issue 11."""

from __future__ import annotations

from bench.floor import FloorFigures, Shape
from bench.load import PACED_PAUSE, STATUS_EVERY, LoadFigures
from bench.report import Report, at_most, ms
from bench.sizes import HistoryFigures
from bench.soak import SoakFigures
from bench.ws import WsFigures

LATENCY_GOAL_MS = 75
STATUS_P99_GOAL_MS = 10
WS_P99_GOAL_MS = 50
RSS_GOAL_MB = 150
FLOOR_SHARE_GOAL = 0.5


def add_load(report: Report, load: LoadFigures, floor_figures: FloorFigures, shape: Shape) -> None:
    f, floor = report.figures, floor_figures.jobs_per_s
    f["floor_jobs_per_s"] = round(floor, 1)
    f["jobs_per_s"] = round(load.jobs_per_s, 1)
    f["latency_p50_ms"] = ms(load.paced, 0.5)
    f["floor_latency_p50_ms"] = ms(floor_figures.paced, 0.5)
    f["latency_b2b_p50_ms"] = ms(load.back_to_back, 0.5)
    f["status_p50_ms"] = ms(load.status_lookups, 0.5)
    f["status_p99_ms"] = ms(load.status_lookups, 0.99)
    f["health_p99_ms"] = ms(load.health_lookups, 0.99)
    share = load.jobs_per_s / floor
    report.add(
        "floor: bare Temporal workflows/s",
        f"{floor:.1f}",
        note=f"{_rounds(load)} in turn with ours, same server; each as one sadtalker job's history: {shape.describe()}",
    )
    report.add(
        "sadtalker jobs/s",
        f"{load.jobs_per_s:.1f} ({share:.2f} of the floor)",
        f"≥ {FLOOR_SHARE_GOAL} × floor",
        share >= FLOOR_SHARE_GOAL,
        f"{_rounds(load)} over HTTP, each until its last `completed`; {load.failed} failed",
    )
    report.add(
        "POST → completed, paced, p50 / p90",
        f"{f['latency_p50_ms']} / {ms(load.paced, 0.9)} ms",
        f"≤ {LATENCY_GOAL_MS} ms",
        at_most(f["latency_p50_ms"], LATENCY_GOAL_MS),
        f"{len(load.paced)} jobs, {PACED_PAUSE:g} s apart, each followed by one of the floor's"
        + _against_floor(f["latency_p50_ms"], f["floor_latency_p50_ms"]),
    )
    report.add(
        "floor: bare Temporal workflow, paced, p50 / p90",
        f"{f['floor_latency_p50_ms']} / {ms(floor_figures.paced, 0.9)} ms",
        note=f"{len(floor_figures.paced)} of the floor's workflows, each {PACED_PAUSE:g} s after one of our paced jobs,"
        " start → result: what Temporal alone takes for that shape on this server",
    )
    report.add(
        "POST → completed, back to back, p50 / p90",
        f"{f['latency_b2b_p50_ms']} / {ms(load.back_to_back, 0.9)} ms",
        note=f"{len(load.back_to_back)} jobs, each submitted when the one before completed",
    )
    report.add(
        "GET /api/status under load, p50 / p99",
        f"{f['status_p50_ms']} / {f['status_p99_ms']} ms",
        f"p99 ≤ {STATUS_P99_GOAL_MS} ms",
        at_most(f["status_p99_ms"], STATUS_P99_GOAL_MS),
        f"{len(load.status_lookups)} lookups, one every {STATUS_EVERY * 1000:.0f} ms,"
        f" while our {_rounds(load)} ran (bench.http_probe: one keep-alive connection of its own)",
    )
    report.add(
        "floor: GET /health under the same load, p50 / p99",
        f"{ms(load.health_lookups, 0.5)} / {f['health_p99_ms']} ms",
        note=f"{len(load.health_lookups)} requests that do nothing (no Redis, no PostgreSQL), one every"
        f" {STATUS_EVERY * 1000:.0f} ms between the status lookups: what any answer takes on these cores then",
    )


def _rounds(load: LoadFigures) -> str:
    return f"{load.rounds} round{'s' if load.rounds > 1 else ''} of {load.queued} queued at once"


def _against_floor(ours: float | None, floor: float | None) -> str:
    return f"; {ours / floor:.1f} × the floor's paced p50" if ours and floor else ""


def add_ws(report: Report, found: tuple[WsFigures | None, WsFigures]) -> None:
    reference, ws = found
    f = report.figures
    f["ws_clients"], f["ws_dropped"] = ws.clients, ws.dropped
    f["ws_p50_ms"], f["ws_p99_ms"] = ms(ws.latencies, 0.5), ms(ws.latencies, 0.99)
    f["api_rss_mb"] = round(ws.api_rss_mb, 1)
    p99_met = at_most(f["ws_p99_ms"], WS_P99_GOAL_MS)
    report.add(
        "WebSocket publish → client, p50 / p99",
        f"{f['ws_p50_ms']} / {f['ws_p99_ms']} ms",
        f"p99 ≤ {WS_P99_GOAL_MS} ms, none dropped",
        bool(p99_met) and ws.dropped == 0,
        f"{ws.clients} clients ({ws.processes} processes of their own) over {ws.jobs} running jobs; the workflow's"
        f" `completed` from its publish (seen by our own subscriber) to each client; {len(ws.latencies)} measured,"
        f" {ws.dropped} dropped, {ws.late} subscribed after the end; jobs held {ws.hold_s:.1f} s at their script"
        " node (the LLM's progress ticks reach the clients meanwhile)",
    )
    if reference:
        report.add(
            f"  the same with only {reference.clients} clients, p50 / p99",
            f"{ms(reference.latencies, 0.5)} / {ms(reference.latencies, 0.99)} ms",
            note=f"{reference.dropped} dropped; API RSS {reference.api_rss_mb:.0f} MB",
        )
    report.add(
        "API RSS with those clients connected",
        f"{ws.api_rss_mb:.0f} MB",
        f"≤ {RSS_GOAL_MB} MB",
        at_most(ws.api_rss_mb, RSS_GOAL_MB),
        "VmRSS of `spinbot api` (a child of `spinbot dev`), the larger of: all subscribed / all pushed",
    )


def add_plan(report: Report, plan_ms: float, edges: int) -> None:
    report.figures["plan_500_ms"] = round(plan_ms, 1)
    report.add(
        "planning a 500-node graph",
        f"{plan_ms:.0f} ms",
        "off the API's event loop",
        note=f"core.planner.plan, 500 nodes / {edges} edges, median of 5 in this process",
    )


def add_history(report: Report, history: HistoryFigures) -> None:
    report.figures["history_mb_200"] = round(history.bytes / 1e6, 3)
    report.add(
        f"history of a {history.nodes}-node job",
        f"{history.bytes / 1e6:.2f} MB",
        "well under 10 MB a run",
        note=f"{history.runs} run(s), {history.events} events (Temporal's history_size_bytes, summed over"
        f" continue-as-new runs); the job {history.status} in {history.seconds:.0f} s",
    )


def add_soak(report: Report, soak: SoakFigures) -> None:
    retention = (
        f"retention windows shortened to {soak.window:g} s, measured after them"
        if soak.window
        else "retention as shipped (acked stream entries 300 s, finished jobs' keys 1 h, events 168 h)"
    )
    report.figures["redis_bytes_per_job"] = round(soak.redis_bytes_per_job)
    report.figures["pg_bytes_per_job"] = round(soak.pg_bytes_per_job)
    report.add(
        "Redis bytes per job after the soak",
        f"{soak.redis_bytes_per_job:,.0f} B",
        "bounded: grows with work, not time",
        note=f"INFO memory used_memory growth over {soak.jobs} jobs ({soak.jobs / soak.seconds:.1f} jobs/s,"
        f" 40 in flight, {soak.failed} failed); {retention}",
    )
    report.add(
        "PostgreSQL bytes per job after the soak",
        f"{soak.pg_bytes_per_job:,.0f} B",
        "bounded: grows with work, not time",
        note=f"pg_total_relation_size of our tables (indexes, TOAST) growth; whole database"
        f" {soak.database_bytes / soak.jobs:,.0f} B per job",
    )
