"""Parsing of what arrives from the data plane: stream entries and pub/sub payloads, checked against the schemas."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from core.contracts import Bridge, ContractError, check, first_error
from core.failures import clean_error
from workflows.graph import clamp_progress, drop_nulls


def parse_graph_entry(fields: dict) -> tuple[str, dict]:
    """(jobId, graph) of a stream entry; nulls in the graph mean absent. Raises ContractError."""
    check(fields, "stream-entry.schema.json")
    try:
        graph = json.loads(fields["graph"])
    except json.JSONDecodeError as exc:
        raise ContractError(f"graph: not valid JSON ({exc.msg})") from None
    if not isinstance(graph, dict):
        raise ContractError("graph: must be a JSON object")
    graph = drop_nulls(graph)
    problem = first_error(graph, "graph.schema.json")
    if problem:
        raise ContractError(f"graph/{problem}")
    if graph["workflowId"] != fields["jobId"]:
        raise ContractError(f"graph/workflowId: {graph['workflowId']!r} differs from jobId {fields['jobId']!r}")
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


def parse_event(bridge: Bridge, channel: str, raw: str) -> JobEvent:
    """A pub/sub message as a JobEvent. Raises ContractError for anything off-contract."""
    for kind in ("status", "progress", "data"):
        prefix = bridge.channel(kind, "")
        if channel.startswith(prefix):
            job_id = channel[len(prefix) :]
            break
    else:
        raise ContractError(f"channel {channel!r}: not a job channel")
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        raise ContractError(f"{channel}: payload is not JSON") from None
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
        progress=clamp_progress(payload["progress"]) if kind == "progress" else None,
        data=payload.get("data"),
        created=created,
        fingerprint=hashlib.sha1(f"{channel}\n{raw}".encode()).hexdigest(),
        error=clean_error(payload.get("error")) if kind == "status" else None,
    )
