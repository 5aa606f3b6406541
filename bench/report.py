"""The bench's figures: a table for people (each figure beside its goal from issue 11), then one JSON line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from tests.ws_clients import percentile

KEYS = (
    "floor_jobs_per_s",
    "jobs_per_s",
    "latency_p50_ms",
    "floor_latency_p50_ms",
    "latency_b2b_p50_ms",
    "status_p50_ms",
    "status_p99_ms",
    "health_p99_ms",
    "ws_clients",
    "ws_p50_ms",
    "ws_p99_ms",
    "ws_dropped",
    "api_rss_mb",
    "plan_500_ms",
    "history_mb_200",
    "redis_bytes_per_job",
    "pg_bytes_per_job",
)


def ms(values: list[float], share: float) -> float | None:
    return round(percentile(values, share) * 1000, 1) if values else None


@dataclass
class Row:
    label: str
    value: str
    goal: str = "—"
    met: bool | None = None  # None: no numeric goal
    note: str = ""


@dataclass
class Report:
    figures: dict = field(default_factory=lambda: dict.fromkeys(KEYS))
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, value: str, goal: str = "—", met: bool | None = None, note: str = "") -> None:
        self.rows.append(Row(label, value, goal, met, note))

    def json_line(self) -> str:
        return json.dumps({key: self.figures[key] for key in KEYS}, separators=(", ", ": "))

    def print(self, title: str) -> None:
        table = Table(title=title)
        for column in ("figure", "this run", "goal (issue 11)", "met", "how / note"):
            table.add_column(column, overflow="fold")
        for row in self.rows:
            met = "" if row.met is None else ("yes" if row.met else "NO")
            table.add_row(row.label, row.value, row.goal, met, row.note)
        console = Console(width=160)
        console.print(table)
        for note in self.notes:
            console.print(note)
        print(self.json_line(), flush=True)


def at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal
