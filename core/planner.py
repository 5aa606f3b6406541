"""The planner: turns a planning request (PROTOCOL §2) into a checked, strict langgraph.v1 job graph."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from typing import Any

from core.contracts import ConfigError, ContractError, Contracts
from core.graph_shape import (
    PlanningError,
    check_structure,
    edge_label,
    json_type,
    node_label,
    show,
)
from core.node_params import check_node_params
from core.schemas import first_error
from core.wire import MAX_DEPTH, check_portable
from workflows.status import WAITING_NODE, NodeStatus

GRAPH_SCHEMA = "graph.schema.json"
PLANES = ("node", "python")
LLM_SERVICE = "llm.generate_script"
LLM_DEFAULT_KEYS = ("model", "temperature", "endpoint", "timeoutMs")
INFINITETALK_VARIANT = "f5tts_infinitetalk"
INPUT_BUCKET = "input"


def plan(
    request: Any,
    job_id: str,
    contracts: Contracts,
    llm_defaults: dict,
    llm_endpoints: Iterable[str] | None = None,
) -> dict:
    """A new, checked job graph for `request`; raises PlanningError and nothing else on bad input.

    `llm_endpoints` are the LLM URLs a node may name (default: only `llm_defaults["endpoint"]`).
    """
    return _plan(request, job_id, contracts, llm_defaults, llm_endpoints, complete=True)


def _plan(
    request: Any,
    job_id: str,
    contracts: Contracts,
    llm_defaults: dict,
    llm_endpoints: Iterable[str] | None,
    complete: bool,
) -> dict:
    try:
        # Before anything echoes the caller's text: a lone surrogate cannot even be written as UTF-8.
        _check_portable(request, "request")
        graph, variant = _requested_graph(request, contracts.pipelines)
        check_structure(graph)
        _check_services(graph["nodes"], contracts)
        _check_statuses(graph["nodes"])
        planned = _filled(graph, job_id, variant, llm_defaults)
        _check_schema(planned)
        _check_params(planned["nodes"], contracts, complete)
        _check_llm_endpoints(planned["nodes"], _allowed_endpoints(llm_defaults, llm_endpoints))
        # What filling in added, too; and no deeper than the streams take, else the data plane sets it aside and the
        # job waits in vain. (The caller's own text was checked above, each string by its place.)
        check_portable(planned, "graph", MAX_DEPTH)
    except RecursionError:
        # Absurdly deep JSON must be a rejection, not a crash of the caller.
        raise PlanningError("graph is nested too deeply") from None
    except ContractError as exc:
        raise PlanningError(str(exc)) from None
    return planned


def infinitetalk_request(
    prompt: str,
    ref_text: str,
    image_key: str,
    audio_key: str,
    llm_defaults: dict,
    tone: str = "friendly",
    length: str | int = "short",
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
        raise PlanningError(f"a planning request must be a JSON object, got {json_type(request)}")
    mode = request.get("mode")
    if mode == "fixed_graph":
        return _from_template(request, pipelines)
    if mode == "process_graph":
        return _from_caller(request.get("graph")), None
    raise PlanningError(f'mode must be "fixed_graph" or "process_graph", got {show(mode)}')


def _from_template(request: dict, pipelines: dict) -> tuple[dict, str]:
    variant = request.get("variant")
    if not isinstance(variant, str) or variant not in pipelines:
        raise PlanningError(f"unknown variant {show(variant)} (known: {', '.join(sorted(pipelines))})")
    params = request.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PlanningError(f"params must be an object keyed by node id, got {json_type(params)}")
    template = pipelines[variant]
    # Only nodes and edges: anything else in a template would break the strict graph schema.
    graph = {"nodes": copy.deepcopy(template["nodes"]), "edges": copy.deepcopy(template["edges"])}
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node_id, extra in params.items():
        if node_id not in nodes:
            raise PlanningError(f"params for unknown node {show(node_id)} (variant {variant} has: {', '.join(nodes)})")
        if not isinstance(extra, dict):
            raise PlanningError(f"{node_label(node_id)}: params must be an object, got {json_type(extra)}")
        nodes[node_id]["params"] = {**(nodes[node_id].get("params") or {}), **copy.deepcopy(extra)}
    for node in graph["nodes"]:
        node["status"] = NodeStatus.PENDING
    return graph, variant


def _from_caller(graph: Any) -> dict:
    if isinstance(graph, str):
        try:
            graph = json.loads(graph)
        except ValueError as exc:
            raise PlanningError(f"graph is not valid JSON: {exc}") from None
    if not isinstance(graph, dict):
        raise PlanningError(f"graph must be a JSON object, got {json_type(graph)}")
    _check_portable(graph, "graph")  # a JSON string may carry escapes ("\\ud800") the request check could not see
    return copy.deepcopy(graph)


def _check_services(nodes: list[dict], contracts: Contracts) -> None:
    registry = {plane: contracts.services(plane) for plane in PLANES}
    for node in nodes:
        plane, service = node.get("plane"), node.get("service")
        if plane not in PLANES:
            raise PlanningError(f'{node_label(node["id"])}: plane must be "node" or "python", got {show(plane)}')
        if not isinstance(service, str) or service not in registry[plane]:
            raise PlanningError(
                f"{node_label(node['id'])}: unknown service {show(service)} for plane {show(plane)}"
                f" (known: {', '.join(sorted(registry[plane]))})"
            )


def _check_statuses(nodes: list[dict]) -> None:
    """A submitted node has not run yet: a graph preset `completed` would "complete" having run nothing."""
    for node in nodes:
        status = node.get("status")
        if status is not None and status not in WAITING_NODE:
            raise PlanningError(
                f'{node_label(node["id"])}: status must be "pending" or "ready" on submission, got {show(status)}'
            )


def _check_params(nodes: list[dict], contracts: Contracts, complete: bool) -> None:
    registry = {plane: contracts.services(plane) for plane in PLANES}
    for node in nodes:
        check_node_params(node, registry[node["plane"]][node["service"]], require=complete)


def _allowed_endpoints(llm_defaults: dict, llm_endpoints: Iterable[str] | None) -> set[str]:
    allowed = [llm_defaults.get("endpoint")] if llm_endpoints is None else list(llm_endpoints)
    return {endpoint.rstrip("/") for endpoint in allowed if isinstance(endpoint, str)}


def _check_llm_endpoints(nodes: list[dict], allowed: set[str]) -> None:
    """The LLM URL comes from settings: a caller must not make our activity call a host of its choosing."""
    for node in nodes:
        endpoint = (node.get("params") or {}).get("endpoint") if node["service"] == LLM_SERVICE else None
        if endpoint is None:
            continue
        if not isinstance(endpoint, str) or endpoint.rstrip("/") not in allowed:
            raise PlanningError(
                f"{node_label(node['id'])}: params.endpoint {show(endpoint)} is not an allowed LLM endpoint"
                " (the server's SPINBOT_LLM_ENDPOINT / SPINBOT_LLM_ENDPOINTS; omit it to use the default)"
            )


# --- filling in and the final schema check -----------------------------------


def _filled(graph: dict, job_id: str, variant: str | None, llm_defaults: dict) -> dict:
    context, metadata = _free_form(graph, "context"), _free_form(graph, "metadata")
    pipeline = variant or context.get("pipeline") or "custom"
    if not isinstance(pipeline, str):
        raise PlanningError(f"graph.context.pipeline must be a string, got {json_type(pipeline)}")
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
        raise PlanningError(f"graph.{key} must be an object, got {json_type(value)}")
    return value


def _fill_node(node: dict, llm_defaults: dict) -> None:
    if node.get("status") is None:
        node["status"] = NodeStatus.PENDING
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
    """Only what JSON itself (and so PostgreSQL and the data plane) can carry: no NaN/Infinity, no NUL,
    no lone UTF-16 surrogate (JSON may spell one as "\\ud800"; UTF-8, and so PostgreSQL, cannot hold it)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanningError(f"{where}: {value} is not a JSON number")
    if isinstance(value, str):
        if "\x00" in value:
            raise PlanningError(f"{where}: contains a NUL character")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise PlanningError(f"{where}: contains a lone UTF-16 surrogate (not valid Unicode text)") from None
    if isinstance(value, dict):
        for key, item in value.items():
            _check_portable(key, f"{where} key")
            _check_portable(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_portable(item, f"{where}/{index}")


def _culprit(problem: str, graph: dict) -> str:
    """The node or edge a schema problem ('nodes/3/status: ...') is about, or 'graph'."""
    section, index = ([*problem.split(":", 1)[0].split("/"), ""])[:2]
    if index.isdigit() and section == "nodes":
        return node_label(graph["nodes"][int(index)]["id"])
    if index.isdigit() and section == "edges":
        return edge_label(int(index), graph["edges"][int(index)])
    return "graph"


def check_templates(contracts: Contracts, llm_defaults: dict) -> None:
    """Plan every shipped pipeline once, so a broken template stops start-up instead of failing each request."""
    for variant in contracts.pipelines:
        try:
            # Callers complete a template's params (a script's prompt), so only what is there is checked.
            _plan(
                {"mode": "fixed_graph", "variant": variant},
                "00000000-0000-4000-8000-000000000000",
                contracts,
                llm_defaults,
                None,
                complete=False,
            )
        except PlanningError as exc:
            raise ConfigError(f"{contracts.path('pipelines.json')}: pipelines/{variant}: {exc}") from None
