"""What the Temporal UI shows of a job: a summary on each wait and step, and every node's status as details."""

from __future__ import annotations

from workflows.status import NodeStatus

_ICONS = {
    NodeStatus.PENDING: "·",
    NodeStatus.READY: "·",
    NodeStatus.RUNNING: "▶",
    NodeStatus.COMPLETED: "✓",
    NodeStatus.FAILED: "✗",
    NodeStatus.SKIPPED: "–",
}


def node_label(node: dict) -> str:
    return node.get("name") or node["id"]


def segment_summary(graph: dict, segment: int) -> str:
    """The wait for a segment, named by the python-plane nodes it may run: 'data plane: A → B → C'."""
    waiting = [
        node_label(node)
        for node in graph["nodes"]
        if node["plane"] == "python" and node["status"] in (NodeStatus.PENDING, NodeStatus.READY)
    ]
    return f"data plane (segment {segment}): " + " → ".join(waiting)


def sync_summary(status: str | None, progress: float, segment: int | None, withdraw: bool) -> str:
    """What a persistence step records, in words."""
    if segment is not None:
        return f"hand segment {segment} to the data plane"
    if withdraw:
        return f"record {status}; withdraw the unread segment"
    return f"record {status}" if status else f"record progress {progress:.0%}"


def node_details(graph: dict) -> str:
    """Every node's status, one line each (markdown), for the workflow's current details."""
    lines = []
    for node in graph["nodes"]:
        error = (node.get("error") or {}).get("message")
        tail = f" — {error}" if error and node["status"] == NodeStatus.FAILED else ""
        lines.append(
            f"- {_ICONS.get(node['status'], '?')} **{node_label(node)}** ({node['plane']}): {node['status']}{tail}"
        )
    return "\n".join(lines)
