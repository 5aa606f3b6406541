"""The planner: turns a planning request (PROTOCOL §2) into a checked, strict langgraph.v1 job graph."""
from __future__ import annotations

import copy
import json
import math
from collections import deque
from typing import Any

from spinbot.contracts import ConfigError, Contracts, first_error

GRAPH_SCHEMA = "graph.schema.json"
PLANES = ("node", "python")
# Far above any real pipeline; keeps a hostile request from costing seconds of validation.
MAX_NODES = 500
MAX_EDGES = 2000
LLM_SERVICE = "llm.generate_script"
LLM_DEFAULT_KEYS = ("model", "temperature", "endpoint", "timeoutMs")
INFINITETALK_VARIANT = "f5tts_infinitetalk"
INPUT_BUCKET = "input"


class PlanningError(ValueError):
    """A rejected planning request; the message names the offending node or edge."""


def plan(request: Any, job_id: str, contracts: Contracts, llm_defaults: dict) -> dict:
    """A new, checked job graph for `request`; raises PlanningError and nothing else on bad input."""
    try:
        graph, variant = _requested_graph(request, contracts.pipelines)
        _check_structure(graph)
        _check_services(graph["nodes"], contracts)
        planned = _filled(graph, job_id, variant, llm_defaults)
        _check_schema(planned)
        _check_portable(planned, "graph")
    except RecursionError:
        # Absurdly deep JSON must be a rejection, not a crash of the caller.
        raise PlanningError("graph is nested too deeply") from None
    return planned


def infinitetalk_request(
    prompt: str,
    ref_text: str,
    image_key: str,
    audio_key: str,
    llm_defaults: dict,
    tone: str = "friendly",
    length: str = "short",
    persona: str = "narrator",
) -> dict:
    """The fixed_graph request of POST /api/infinitetalk (PROTOCOL §5); keys are object keys in bucket `input`."""
    llm = {key: llm_defaults[key] for key in LLM_DEFAULT_KEYS if key in llm_defaults}
    return {
        "mode": "fixed_graph",
        "variant": INFINITETALK_VARIANT,
        "params": {
            "script": {"prompt": prompt, "tone": tone, "length": length, "persona": persona, **llm},
            "f5_to_tts": {"audioPath": f"{INPUT_BUCKET}/{audio_key}", "refText": ref_text},
            "infinite_talk": {"imagePath": f"{INPUT_BUCKET}/{image_key}"},
        },
    }


# --- the request -------------------------------------------------------------


def _requested_graph(request: Any, pipelines: dict) -> tuple[dict, str | None]:
    """A private copy of the graph the request asks for, and its variant (None for process_graph)."""
    if not isinstance(request, dict):
        raise PlanningError(f"a planning request must be a JSON object, got {_json_type(request)}")
    mode = request.get("mode")
    if mode == "fixed_graph":
        return _from_template(request, pipelines)
    if mode == "process_graph":
        return _from_caller(request.get("graph")), None
    raise PlanningError(f'mode must be "fixed_graph" or "process_graph", got {_show(mode)}')


def _from_template(request: dict, pipelines: dict) -> tuple[dict, str]:
    variant = request.get("variant")
    if not isinstance(variant, str) or variant not in pipelines:
        raise PlanningError(f"unknown variant {_show(variant)} (known: {', '.join(sorted(pipelines))})")
    params = request.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PlanningError(f"params must be an object keyed by node id, got {_json_type(params)}")
    template = pipelines[variant]
    # Only nodes and edges: anything else in a template would break the strict graph schema.
    graph = {"nodes": copy.deepcopy(template["nodes"]), "edges": copy.deepcopy(template["edges"])}
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node_id, extra in params.items():
        if node_id not in nodes:
            raise PlanningError(f"params for unknown node {_show(node_id)} (variant {variant} has: {', '.join(nodes)})")
        if not isinstance(extra, dict):
            raise PlanningError(f"{_node_label(node_id)}: params must be an object, got {_json_type(extra)}")
        nodes[node_id]["params"] = {**(nodes[node_id].get("params") or {}), **copy.deepcopy(extra)}
    for node in graph["nodes"]:
        node["status"] = "pending"
    return graph, variant


def _from_caller(graph: Any) -> dict:
    if isinstance(graph, str):
        try:
            graph = json.loads(graph)
        except ValueError as exc:
            raise PlanningError(f"graph is not valid JSON: {exc}") from None
    if not isinstance(graph, dict):
        raise PlanningError(f"graph must be a JSON object, got {_json_type(graph)}")
    return copy.deepcopy(graph)


# --- structure: ids, edges, entry, cycles, connectivity ----------------------


def _check_structure(graph: dict) -> None:
    nodes, edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(nodes, list) or not nodes:
        raise PlanningError(f"graph.nodes must be a non-empty list, got {_show(nodes)}")
    if not isinstance(edges, list):
        raise PlanningError(f"graph.edges must be a list (use [] for none), got {_show(edges)}")
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
        raise PlanningError(f"unreachable nodes (not connected to entry node {_show(entries[0])}): {_show_list(stray)}")


def _node_ids(nodes: list) -> list[str]:
    """Node ids in node order; each node must be an object with a unique, non-empty string id."""
    first_seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise PlanningError(f"node {index}: must be an object, got {_json_type(node)}")
        node_id = node.get("id")
        if not isinstance(node_id, str) or not node_id:
            raise PlanningError(f"node {index}: id must be a non-empty string, got {_show(node_id)}")
        if node_id in first_seen:
            raise PlanningError(f"{_node_label(node_id)}: duplicate id (nodes {first_seen[node_id]} and {index})")
        first_seen[node_id] = index
    return list(first_seen)


def _links(edges: list, ids: list[str]) -> list[tuple[str, str]]:
    """(from, to) pairs in edge order; each edge must join two known nodes."""
    known = set(ids)
    links = []
    for index, edge in enumerate(edges):
        if not isinstance(edge, dict):
            raise PlanningError(f"edge {index}: must be an object, got {_json_type(edge)}")
        for end in ("from", "to"):
            if not isinstance(edge.get(end), str) or not edge[end]:
                raise PlanningError(f'edge {index}: "{end}" must be a non-empty string, got {_show(edge.get(end))}')
        for end in (edge["from"], edge["to"]):
            if end not in known:
                raise PlanningError(f"{_edge_label(index, edge)}: unknown node {_show(end)}")
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
    parent = {}
    for source, target in links:
        if indegree[source] > 0 and indegree[target] > 0:
            parent.setdefault(target, source)
    walked: dict[str, int] = {}
    node_id = left[0]
    while node_id not in walked:
        walked[node_id] = len(walked)
        node_id = parent[node_id]
    backwards = list(walked)[walked[node_id]:]
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


def _check_services(nodes: list[dict], contracts: Contracts) -> None:
    registry = {plane: contracts.services(plane) for plane in PLANES}
    for node in nodes:
        plane, service = node.get("plane"), node.get("service")
        if plane not in PLANES:
            raise PlanningError(f'{_node_label(node["id"])}: plane must be "node" or "python", got {_show(plane)}')
        if not isinstance(service, str) or service not in registry[plane]:
            raise PlanningError(
                f"{_node_label(node['id'])}: unknown service {_show(service)} for plane {_show(plane)}"
                f" (known: {', '.join(sorted(registry[plane]))})"
            )


# --- filling in and the final schema check -----------------------------------


def _filled(graph: dict, job_id: str, variant: str | None, llm_defaults: dict) -> dict:
    context, metadata = _free_form(graph, "context"), _free_form(graph, "metadata")
    pipeline = variant or context.get("pipeline") or "custom"
    if not isinstance(pipeline, str):
        raise PlanningError(f"graph.context.pipeline must be a string, got {_json_type(pipeline)}")
    for node in graph["nodes"]:
        _fill_node(node, llm_defaults)
    for edge in graph["edges"]:
        if edge.get("kind") is None:
            edge["kind"] = "normal"
    return {
        **graph,
        "schema": "langgraph.v1",
        "workflowId": job_id,
        "context": {**context, "pipeline": pipeline},
        "metadata": {**metadata, "planner": "spinbot", "version": 1, "pipeline": pipeline},
    }


def _free_form(graph: dict, key: str) -> dict:
    value = graph.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PlanningError(f"graph.{key} must be an object, got {_json_type(value)}")
    return value


def _fill_node(node: dict, llm_defaults: dict) -> None:
    if node.get("status") is None:
        node["status"] = "pending"
    if node["service"] != LLM_SERVICE:
        return
    params = {} if node.get("params") is None else node["params"]
    if not isinstance(params, dict):
        return  # the schema check names this node
    for key in LLM_DEFAULT_KEYS:
        # null means absent, as everywhere on the wire.
        if params.get(key) is None and key in llm_defaults:
            params[key] = llm_defaults[key]
    node["params"] = params


def _check_schema(graph: dict) -> None:
    problem = first_error(graph, GRAPH_SCHEMA)
    if problem:
        raise PlanningError(f"{_culprit(problem, graph)}: {problem}")


def _check_portable(value: Any, where: str) -> None:
    """Only what JSON itself (and so PostgreSQL and the data plane) can carry: no NaN/Infinity, no NUL."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanningError(f"{where}: {value} is not a JSON number")
    if isinstance(value, str) and "\x00" in value:
        raise PlanningError(f"{where}: contains a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_portable(key, f"{where} key")
            _check_portable(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_portable(item, f"{where}/{index}")


def _culprit(problem: str, graph: dict) -> str:
    """The node or edge a schema problem ('nodes/3/status: ...') is about, or 'graph'."""
    section, index = (problem.split(":", 1)[0].split("/") + [""])[:2]
    if index.isdigit() and section == "nodes":
        return _node_label(graph["nodes"][int(index)]["id"])
    if index.isdigit() and section == "edges":
        return _edge_label(int(index), graph["edges"][int(index)])
    return "graph"


# --- message helpers ---------------------------------------------------------


def _node_label(node_id: str) -> str:
    return f"node {_show(node_id)}"


def _edge_label(index: int, edge: dict) -> str:
    return f"edge {index} ({edge['from']} -> {edge['to']})"


def _show(value: Any, limit: int = 80) -> str:
    """A value as JSON for a message, cut short so a huge value cannot flood the reply."""
    text = json.dumps(value, ensure_ascii=False, default=str, skipkeys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_list(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(_show(node_id) for node_id in ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_templates(contracts: Contracts, llm_defaults: dict) -> None:
    """Plan every shipped pipeline once, so a broken template stops start-up instead of failing each request."""
    for variant in contracts.pipelines:
        try:
            plan({"mode": "fixed_graph", "variant": variant}, "00000000-0000-4000-8000-000000000000", contracts, llm_defaults)
        except PlanningError as exc:
            raise ConfigError(f"pipelines.json: pipelines/{variant}: {exc}") from None
