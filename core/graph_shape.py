"""The shape of a job graph: unique ids, edges between known nodes, an entry, no cycle, one connected whole.

Checked before anything else, with messages that name the offending node or edge.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

# Far above any real pipeline; keeps a hostile request from costing seconds of validation.
MAX_NODES = 500
MAX_EDGES = 2000


class PlanningError(ValueError):
    """A rejected planning request; the message names the offending node or edge."""


def check_structure(graph: dict) -> None:
    nodes, edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(nodes, list) or not nodes:
        raise PlanningError(f"graph.nodes must be a non-empty list, got {show(nodes)}")
    if not isinstance(edges, list):
        raise PlanningError(f"graph.edges must be a list (use [] for none), got {show(edges)}")
    if len(nodes) > MAX_NODES or len(edges) > MAX_EDGES:
        raise PlanningError(
            f"graph too large: {len(nodes)} nodes and {len(edges)} edges (at most {MAX_NODES} and {MAX_EDGES})"
        )
    ids = _node_ids(nodes)
    links = _links(edges, ids)
    entries = _entry_ids(ids, links)
    if not entries:
        raise PlanningError("no entry node: every node has an incoming edge")
    cycle = _find_cycle(ids, links)
    if cycle:
        raise PlanningError("cycle: " + " -> ".join(cycle + cycle[:1]))
    stray = _disconnected_from(entries[0], ids, links)
    if stray:
        raise PlanningError(f"unreachable nodes (not connected to entry node {show(entries[0])}): {show_list(stray)}")


def check_ids_and_edges(graph: dict) -> None:
    """Unique node ids, and edges that join known nodes: what graph logic (workflows/graph.py) indexes by, so a graph
    from the wire (the schema cannot say this) must hold it before any of that runs. Raises PlanningError."""
    _links(graph["edges"], _node_ids(graph["nodes"]))


def _node_ids(nodes: list) -> list[str]:
    """Node ids in node order; each node must be an object with a unique, non-empty string id."""
    first_seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise PlanningError(f"node {index}: must be an object, got {json_type(node)}")
        node_id = node.get("id")
        if not isinstance(node_id, str) or not node_id:
            raise PlanningError(f"node {index}: id must be a non-empty string, got {show(node_id)}")
        if node_id in first_seen:
            raise PlanningError(f"{node_label(node_id)}: duplicate id (nodes {first_seen[node_id]} and {index})")
        first_seen[node_id] = index
    return list(first_seen)


def _links(edges: list, ids: list[str]) -> list[tuple[str, str]]:
    """(from, to) pairs in edge order; each edge must join two known nodes."""
    known = set(ids)
    links = []
    for index, edge in enumerate(edges):
        if not isinstance(edge, dict):
            raise PlanningError(f"edge {index}: must be an object, got {json_type(edge)}")
        for end in ("from", "to"):
            if not isinstance(edge.get(end), str) or not edge[end]:
                raise PlanningError(f'edge {index}: "{end}" must be a non-empty string, got {show(edge.get(end))}')
        for end in (edge["from"], edge["to"]):
            if end not in known:
                raise PlanningError(f"{edge_label(index, edge)}: unknown node {show(end)}")
        links.append((edge["from"], edge["to"]))
    return links


def _entry_ids(ids: list[str], links: list[tuple[str, str]]) -> list[str]:
    targets = {target for _, target in links}
    return [node_id for node_id in ids if node_id not in targets]


def _find_cycle(ids: list[str], links: list[tuple[str, str]]) -> list[str]:
    """One cycle's node ids in edge direction, starting at its earliest node; [] when acyclic."""
    # Kahn's algorithm peels off every node not on (or downstream of) a cycle.
    indegree = dict.fromkeys(ids, 0)
    children: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for source, target in links:
        indegree[target] += 1
        children[source].append(target)
    queue = deque(node_id for node_id in ids if indegree[node_id] == 0)
    while queue:
        for child in children[queue.popleft()]:
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    left = [node_id for node_id in ids if indegree[node_id] > 0]
    if not left:
        return []
    # Every node left has a parent that is also left, so walking parents must come round a cycle.
    parent: dict[str, str] = {}
    for source, target in links:
        if indegree[source] > 0 and indegree[target] > 0:
            parent.setdefault(target, source)
    walked: dict[str, int] = {}
    node_id = left[0]
    while node_id not in walked:
        walked[node_id] = len(walked)
        node_id = parent[node_id]
    backwards = list(walked)[walked[node_id] :]
    cycle = backwards[::-1]
    order = {node_id: index for index, node_id in enumerate(ids)}
    start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
    return cycle[start:] + cycle[:start]


def _disconnected_from(entry: str, ids: list[str], links: list[tuple[str, str]]) -> list[str]:
    """Nodes not joined to `entry` by any path, ignoring edge direction."""
    neighbours: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for source, target in links:
        neighbours[source].append(target)
        neighbours[target].append(source)
    seen, queue = {entry}, deque([entry])
    while queue:
        for other in neighbours[queue.popleft()]:
            if other not in seen:
                seen.add(other)
                queue.append(other)
    return [node_id for node_id in ids if node_id not in seen]


def node_label(node_id: str) -> str:
    return f"node {show(node_id)}"


def edge_label(index: int, edge: dict) -> str:
    return f"edge {index} ({edge['from']} -> {edge['to']})"


def show(value: Any, limit: int = 80) -> str:
    """A value as JSON for a message, cut short so a huge value cannot flood the reply."""
    text = json.dumps(value, ensure_ascii=False, default=str, skipkeys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_list(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(show(node_id) for node_id in ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
