"""Parsing of what arrives from the data plane: stream entries and pub/sub payloads, checked against the schemas."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from core.contracts import Bridge, ContractError, check
from core.failures import clean_error
from core.graph_shape import PlanningError, check_ids_and_edges
from core.schemas import first_error
from core.wire import WireLimits, load_json, text_of
from workflows.graph import clamp_progress, drop_nulls
from workflows.names import CONTROL_SOURCE


def parse_graph_entry(fields: dict) -> tuple[str, dict]:
    """(jobId, graph) of a stream entry; nulls in the graph mean absent. Raises ContractError, also for a graph whose
    node ids repeat or whose edges name no node, which the schema lets through and readiness would crash on."""
    check(fields, "stream-entry.schema.json")
    graph = load_json(fields["graph"], "graph")
    if not isinstance(graph, dict):
        raise ContractError("graph: must be a JSON object")
    graph = drop_nulls(graph)
    problem = first_error(graph, "graph.schema.json")
    if problem:
        raise ContractError(f"graph/{problem}")
    if graph["workflowId"] != fields["jobId"]:
        raise ContractError(f"graph/workflowId: {graph['workflowId']!r} differs from jobId {fields['jobId']!r}")
    try:
        check_ids_and_edges(graph)
    except PlanningError as exc:
        raise ContractError(f"graph: {exc}") from None
    return fields["jobId"], graph


def parse_created(value) -> datetime | None:
    """`created` as ms since epoch (string or number) or ISO-8601; None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class JobEvent:
    """One status, progress or data message about a job."""

    kind: str
    job_id: str
    status: str | None
    progress: float | None
    data: object
    created: datetime | None
    fingerprint: str
    error: dict | None = None  # a `failed` status may say why: {nodeId, message, code}
    source: str | None = None  # "control-plane" on the workflow's own status messages
    event_id: str | None = None  # the message's own identity, when its publisher gives one (the workflow does)

    @property
    def recorded_by_workflow(self) -> bool:
        """The workflow's own status messages (`control-plane`, with its eventId): their rows were written with the
        step's snapshot. A data message says nothing of who sent it, so every one is recorded."""
        return self.kind == "status" and self.source == CONTROL_SOURCE and self.event_id is not None


def channel_job(bridge: Bridge, channel: bytes | str) -> tuple[str, str]:
    """(kind, jobId) named by a job channel, read without its payload. Raises ContractError."""
    channel = text_of(channel, "channel")
    for kind in ("status", "progress", "data"):
        prefix = bridge.channel(kind, "")
        if channel.startswith(prefix):
            return kind, channel[len(prefix) :]
    raise ContractError(f"channel {channel!r}: not a job channel")


def parse_event(
    bridge: Bridge, channel: bytes | str, raw: bytes | str, max_bytes: int = WireLimits.max_bytes
) -> JobEvent:
    """A pub/sub message (as read, bytes or text) as a JobEvent. Raises ContractError for anything off-contract."""
    kind, job_id = channel_job(bridge, channel)
    channel = text_of(channel, "channel")
    if len(raw) > max_bytes:
        raise ContractError(f"{channel}: message of {len(raw)} bytes is over the limit of {max_bytes}")
    raw = text_of(raw, channel)
    payload = load_json(raw, channel)
    problem = first_error(payload, "pubsub.schema.json", kind)
    if problem:
        raise ContractError(f"{channel}: {problem}")
    if payload["jobId"] != job_id:
        raise ContractError(f"{channel}: jobId {payload['jobId']!r} differs from the channel's")
    try:
        created = parse_created(payload.get("created"))
    except (ValueError, OverflowError, OSError):
        raise ContractError(f"{channel}: created {payload.get('created')!r} is not a date") from None
    return JobEvent(
        kind=kind,
        job_id=job_id,
        status=payload.get("status"),
        progress=_progress(channel, payload["progress"]) if kind == "progress" else None,
        data=payload.get("data"),
        created=created,
        fingerprint=fingerprint(channel, raw, payload.get("eventId")),
        error=clean_error(payload.get("error")) if kind == "status" else None,
        source=payload["source"] if kind == "status" and isinstance(payload.get("source"), str) else None,
        event_id=payload["eventId"] if isinstance(payload.get("eventId"), str) and payload["eventId"] else None,
    )


def _progress(channel: str, value: float | str) -> float:
    """A reported progress clamped to [0, 1] (PROTOCOL §1); Infinity (a string may spell one, "1e999") is refused."""
    try:
        finite = math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise ContractError(f"{channel}: progress {str(value)[:40]!r} is not a finite number")
    return clamp_progress(value)


def fingerprint(channel: str, raw: str, event_id: object = None) -> str:
    """What keys the message's row: its eventId when it has one (the workflow's messages: the same when a step
    runs again in a new workflow task, whose `created` differs), else the whole message as sent."""
    identity = f"id:{event_id}" if isinstance(event_id, str) and event_id else raw
    return hashlib.sha1(f"{channel}\n{identity}".encode()).hexdigest()
