"""Pure graph logic shared by the workflow and the reference data plane: readiness, inputs, progress, merges."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from workflows.status import NodeStatus

RUNNABLE = (NodeStatus.PENDING, NodeStatus.READY)
# Fields the data plane may change on its own (python-plane) nodes.
WORKER_FIELDS = ("status", "input", "output", "error", "retries", "telemetry")
# Optional fields the existing worker sends back as null when it did not receive them.
OPTIONAL_NODE_FIELDS = ("name", "params", "input", "output", "error", "retries", "tags", "telemetry", "progressWeight")


def nodes_by_id(graph: dict) -> dict[str, dict]:
    return {node["id"]: node for node in graph["nodes"]}


def upstream_ids(graph: dict, node_id: str) -> list[str]:
    """Ids of the nodes with an edge into `node_id`, in edge order."""
    return [edge["from"] for edge in graph["edges"] if edge["to"] == node_id]


def ready_nodes(graph: dict, plane: str | None = None) -> list[dict]:
    """Nodes that are pending (or ready) and whose every upstream node is completed. O(nodes + edges)."""
    status = {node["id"]: node["status"] for node in graph["nodes"]}
    blocked = {edge["to"] for edge in graph["edges"] if status[edge["from"]] != NodeStatus.COMPLETED}
    return [
        node
        for node in graph["nodes"]
        if node["status"] in RUNNABLE and (plane is None or node["plane"] == plane) and node["id"] not in blocked
    ]


def merged_input(graph: dict, node: dict) -> dict:
    """The node's own input, then each upstream node's output merged over it in edge order."""
    by_id = nodes_by_id(graph)
    merged = dict(node["input"]) if isinstance(node.get("input"), dict) else {}
    for up in upstream_ids(graph, node["id"]):
        output = by_id[up].get("output")
        if isinstance(output, dict):
            merged.update(output)
    return merged


def _weights(graph: dict) -> tuple[dict[str, float], float]:
    weights = {node["id"]: float(node.get("progressWeight") or 0) for node in graph["nodes"]}
    total = sum(weights.values())
    if total <= 0:  # no weights at all: every node counts the same
        weights = {node_id: 1.0 for node_id in weights}
        total = float(len(weights))
    return weights, total


def weight_share(graph: dict, node_id: str) -> float:
    """The node's share of the whole job's weight (every node alike when the graph has no weights)."""
    weights, total = _weights(graph)
    return weights[node_id] / total


def job_progress(graph: dict, also_done: Iterable[str] = ()) -> float:
    """Completed weight over total weight, in [0, 1]; `also_done` counts extra nodes as completed."""
    weights, total = _weights(graph)
    done_ids = set(also_done) | {node["id"] for node in graph["nodes"] if node["status"] == NodeStatus.COMPLETED}
    done = sum(w for node_id, w in weights.items() if node_id in done_ids)
    return clamp_progress(done / total)


def progress_ceiling(graph: dict) -> float:
    """The most progress the job can honestly reach before the workflow's next change: completed nodes, node-plane
    nodes running, and python-plane nodes the data plane can still run without waiting on the node plane.

    Reported progress (either plane's pub/sub) is clamped to it; not used by the workflow itself.
    """
    weights, total = _weights(graph)
    by_id = nodes_by_id(graph)
    parents: dict[str, list[str]] = {node_id: [] for node_id in by_id}
    children: dict[str, list[str]] = {node_id: [] for node_id in by_id}
    for edge in graph["edges"]:
        parents[edge["to"]].append(edge["from"])
        children[edge["from"]].append(edge["to"])
    waiting = {node_id: len(ups) for node_id, ups in parents.items()}
    order = [node_id for node_id, count in waiting.items() if count == 0]
    for node_id in order:  # topological: grows as parents are visited
        for child in children[node_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                order.append(child)
    reachable: set[str] = set()
    for node_id in order:
        node = by_id[node_id]
        if node["status"] == NodeStatus.COMPLETED or (node["plane"] == "node" and node["status"] == NodeStatus.RUNNING):
            reachable.add(node_id)
        elif node["plane"] == "python" and node["status"] in (*RUNNABLE, NodeStatus.RUNNING):
            ups = parents[node_id]
            if all(
                by_id[up]["status"] == NodeStatus.COMPLETED or (up in reachable and by_id[up]["plane"] == "python")
                for up in ups
            ):
                reachable.add(node_id)
    return clamp_progress(sum(weights[node_id] for node_id in reachable) / total)


def clamp_progress(value: Any) -> float:
    """A progress figure as a float in [0, 1]; numeric strings accepted, garbage is 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if number != number:  # NaN
        return 0.0
    return min(1.0, max(0.0, number))


def drop_nulls(graph: dict) -> dict:
    """A handback with every optional null removed: null means absent."""
    clean = {k: v for k, v in graph.items() if v is not None}
    for key in ("nodes", "edges"):
        if isinstance(graph.get(key), list):  # anything else is left for the schema to reject
            clean[key] = [_without_nulls(item) for item in graph[key]]
    return clean


def _without_nulls(item: Any) -> Any:
    return {k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item


def merge_handback(graph: dict, handback: dict) -> dict:
    """A copy of `graph` with the handback's python-plane node fields; node-plane nodes never change."""
    merged = copy.deepcopy(graph)
    theirs = nodes_by_id(handback)
    for node in merged["nodes"]:
        if node["plane"] != "python" or node["id"] not in theirs:
            continue
        for field in WORKER_FIELDS:
            if field in theirs[node["id"]]:
                node[field] = theirs[node["id"]][field]
            elif field != "status":
                node.pop(field, None)
    return merged


def python_part(graph: dict, known: dict | None = None) -> dict:
    """What a handback may change, and no more: its segment tag and the python-plane nodes that differ from
    `known` (the job's last recorded graph), or all python-plane nodes when nothing is known."""
    known_nodes = nodes_by_id(known) if known else {}
    nodes = [
        node for node in graph["nodes"] if node["plane"] == "python" and _changed(node, known_nodes.get(node["id"]))
    ]
    return {"metadata": {"handoff": (graph.get("metadata") or {}).get("handoff")}, "nodes": nodes}


def _changed(node: dict, before: dict | None) -> bool:
    return before is None or any(node.get(field) != before.get(field) for field in WORKER_FIELDS)


def fail_unfinished(graph: dict, node_ids: list[str], message: str, code: str) -> bool:
    """Mark the given nodes failed with an error where they have not finished; True when any changed."""
    by_id, changed = nodes_by_id(graph), False
    for node_id in node_ids:
        node = by_id[node_id]
        if node["status"] in (NodeStatus.PENDING, NodeStatus.READY, NodeStatus.RUNNING):
            node["status"] = NodeStatus.FAILED
            node["error"] = {"message": message, "code": code}
            changed = True
    return changed


def python_work_budget(graph: dict, timeouts: dict[str, float], ceiling: float) -> float:
    """The python-plane work still to do, by its services' declared `timeoutSeconds`, capped by `ceiling`."""
    waiting = [node for node in graph["nodes"] if node["plane"] == "python" and node["status"] in RUNNABLE]
    declared = [timeouts.get(node["service"], -1.0) for node in waiting]
    if any(seconds < 0 for seconds in declared):  # -1: no limit of its own
        return ceiling
    return min(ceiling, sum(declared))


def skip_unreachable(graph: dict) -> list[str]:
    """Mark every node still waiting as skipped; returns their ids.

    The workflow calls it only once nothing is running and nothing is ready, so every waiting
    node sits below a failure (or the job was cancelled) and can no longer run.
    """
    skipped = []
    for node in graph["nodes"]:
        if node["status"] in RUNNABLE:
            node["status"] = NodeStatus.SKIPPED
            skipped.append(node["id"])
    return skipped


def failed_nodes(graph: dict) -> list[dict]:
    return [node for node in graph["nodes"] if node["status"] == NodeStatus.FAILED]


def all_completed(graph: dict) -> bool:
    return all(node["status"] == NodeStatus.COMPLETED for node in graph["nodes"])


def reset_for_retry(graph: dict) -> dict:
    """A copy where failed and skipped nodes (and nodes left running) are pending again; completed outputs stay."""
    fresh = copy.deepcopy(graph)
    for node in fresh["nodes"]:
        if node["status"] != NodeStatus.COMPLETED:
            node["status"] = NodeStatus.PENDING
            node.pop("error", None)
            node.pop("output", None)
    return fresh


def mark_cancelled(graph: dict, also: list[str]) -> None:
    """Fail as cancelled every node that was running (or whose activity was cancelled), and the nodes in `also`."""
    for node in graph["nodes"]:
        was_running = node["status"] == NodeStatus.RUNNING or (node.get("error") or {}).get("code") == "CancelledError"
        if was_running or node["id"] in also:
            node["status"] = NodeStatus.FAILED
            node["error"] = {"message": "cancelled", "code": "Cancelled"}
