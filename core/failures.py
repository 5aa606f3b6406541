"""Why a job failed, as clients see it: `{nodeId, message, code}` read from the job's graph."""

from __future__ import annotations

import json
from typing import Any

from workflows.status import NodeStatus

UNKNOWN_CODE = "JobFailed"


def job_error(graph: Any) -> dict | None:
    """The failure of a failed job's graph: the node the workflow named (metadata.failure), else the first
    failed node; None when the graph shows no failure. `nodeId` is null for a cancelled job."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        return None
    nodes = [n for n in graph["nodes"] if isinstance(n, dict)]
    failed = [n for n in nodes if n.get("status") == NodeStatus.FAILED]
    failure = (graph.get("metadata") or {}).get("failure")
    if not isinstance(failure, dict):
        failure = None
    if failure is None and not failed:
        return None
    named = failure.get("nodeId") if failure else None
    node = next((n for n in nodes if n.get("id") == named), None) if named else None
    node = node or (failed[0] if failed else None)
    node_error = (node or {}).get("error")
    node_error = node_error if isinstance(node_error, dict) else {}
    message = (failure or {}).get("message") or node_error.get("message") or "failed"
    return {
        "nodeId": named if failure else (node or {}).get("id"),
        "message": str(message),
        "code": str(node_error.get("code") or (failure or {}).get("code") or UNKNOWN_CODE),
    }


def job_error_from_json(graph_json: str | bytes | None) -> dict | None:
    """job_error of a graph kept as JSON (the `graph` field of the Redis hash job:<id>)."""
    if not graph_json:
        return None
    try:
        return job_error(json.loads(graph_json))
    except (ValueError, TypeError):
        return None


def clean_error(value: Any) -> dict | None:
    """An `error` someone else published, cut down to {nodeId, message, code} strings; None if unusable."""
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        return None
    node_id = value.get("nodeId")
    return {
        "nodeId": node_id if isinstance(node_id, str) else None,
        "message": value["message"][:2000],
        "code": value["code"] if isinstance(value.get("code"), str) else UNKNOWN_CODE,
    }
