"""The planner: both request modes, every rejection, filling-in, and the pipelines of PROTOCOL §2."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.contracts import contracts as shipped_contracts
from core.contracts import load_contracts
from core.graph_shape import MAX_EDGES, MAX_NODES, PlanningError
from core.planner import infinitetalk_request, plan
from core.schemas import first_error

LLM_DEFAULTS = {"model": "llama3", "temperature": 0.7, "endpoint": "http://llm:11434", "timeoutMs": 60_000}
JOB_ID = "job-123"
SCRIPT = {"script": {"prompt": "a fox"}}  # every pipeline's script node needs a prompt

# PROTOCOL §2: (id, service, plane, progressWeight, params.preset) per node, then (from, to) per edge.
PIPELINES = {
    "f5tts_infinitetalk": (
        [
            ("script", "llm.generate_script", "node", 0.05, None),
            ("f5_to_tts", "generate.f5_to_tts", "python", 0.1, None),
            ("infinite_talk", "generate.infinite_talk", "python", 0.45, None),
            ("upscale_video", "generate.upscale_video", "python", 0.4, None),
        ],
        [("script", "f5_to_tts"), ("f5_to_tts", "infinite_talk"), ("infinite_talk", "upscale_video")],
    ),
    "sadtalker": (
        [
            ("script", "llm.generate_script", "node", 0.05, None),
            ("train_voice", "dummy.dummy_task", "python", 0.25, "sadtalker"),
            ("generate_video", "dummy.dummy_task", "python", 0.4, "sadtalker"),
            ("postprocess_video", "dummy.dummy_task", "python", 0.3, "sadtalker"),
        ],
        [("script", "train_voice"), ("train_voice", "generate_video"), ("generate_video", "postprocess_video")],
    ),
    "svd_wav2lip": (
        [
            ("script", "llm.generate_script", "node", 0.05, None),
            ("train_voice", "dummy.dummy_task", "python", 0.25, "svd_wav2lip"),
            ("train_lora", "dummy.dummy_task", "python", 0.5, "svd_wav2lip"),
            ("generate_video", "dummy.dummy_task", "python", 0.4, "svd_wav2lip"),
            ("postprocess_video", "dummy.dummy_task", "python", 0.3, "svd_wav2lip"),
        ],
        [
            ("script", "train_voice"),
            ("script", "train_lora"),
            ("train_voice", "generate_video"),
            ("train_lora", "generate_video"),
            ("generate_video", "postprocess_video"),
        ],
    ),
}


@pytest.fixture(scope="module")
def contracts():
    return load_contracts()


def task(node_id, **fields):
    """A python-plane node of a caller-supplied graph."""
    return {"id": node_id, "service": "dummy.dummy_task", "plane": "python", **fields}


def chain(*ids):
    return [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]


def custom(nodes, edges, **extra):
    return {"mode": "process_graph", "graph": {"nodes": nodes, "edges": edges, **extra}}


def rejection(request, contracts) -> str:
    with pytest.raises(PlanningError) as caught:
        plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    return str(caught.value)


# --- fixed_graph ------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(PIPELINES))
def test_pipelines_match_the_protocol_table(variant, contracts):
    graph = plan({"mode": "fixed_graph", "variant": variant, "params": SCRIPT}, JOB_ID, contracts, LLM_DEFAULTS)
    expected_nodes, expected_edges = PIPELINES[variant]
    nodes = [
        (n["id"], n["service"], n["plane"], n["progressWeight"], (n.get("params") or {}).get("preset"))
        for n in graph["nodes"]
    ]
    assert nodes == expected_nodes
    assert [(e["from"], e["to"], e["kind"]) for e in graph["edges"]] == [(a, b, "normal") for a, b in expected_edges]
    assert {n["status"] for n in graph["nodes"]} == {"pending"}
    assert first_error(graph, "graph.schema.json") is None


def test_fixed_graph_fills_identity_context_and_metadata(contracts):
    graph = plan({"mode": "fixed_graph", "variant": "sadtalker", "params": SCRIPT}, JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["schema"] == "langgraph.v1"
    assert graph["workflowId"] == JOB_ID
    assert graph["context"] == {"pipeline": "sadtalker"}
    assert graph["metadata"] == {"planner": "spinbot", "version": 1, "pipeline": "sadtalker"}


def test_fixed_graph_merges_params_into_the_template(contracts):
    request = {"mode": "fixed_graph", "variant": "sadtalker", "params": {**SCRIPT, "train_voice": {"steps": 3}}}
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    train_voice = next(n for n in graph["nodes"] if n["id"] == "train_voice")
    assert train_voice["params"] == {"preset": "sadtalker", "steps": 3}


def test_given_params_override_template_params(contracts):
    request = {"mode": "fixed_graph", "variant": "sadtalker", "params": {**SCRIPT, "train_voice": {"preset": "custom"}}}
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["nodes"][1]["params"] == {"preset": "custom"}


def test_llm_defaults_fill_only_what_params_omit(contracts):
    request = {
        "mode": "fixed_graph",
        "variant": "sadtalker",
        "params": {"script": {"prompt": "hi", "model": "mistral"}},
    }
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["nodes"][0]["params"] == {**LLM_DEFAULTS, "prompt": "hi", "model": "mistral"}


def test_llm_defaults_only_reach_llm_nodes(contracts):
    graph = plan({"mode": "fixed_graph", "variant": "sadtalker", "params": SCRIPT}, JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["nodes"][1]["params"] == {"preset": "sadtalker"}


def test_templates_are_not_mutated_across_plans(contracts):
    before = copy.deepcopy(contracts.pipelines)
    first = plan(
        {
            "mode": "fixed_graph",
            "variant": "sadtalker",
            "params": {"train_voice": {"steps": 3}, "script": {"prompt": "x"}},
        },
        "job-1",
        contracts,
        LLM_DEFAULTS,
    )
    first["nodes"][1]["params"]["preset"] = "changed by the caller"
    second = plan(
        {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "y"}}},
        "job-2",
        contracts,
        LLM_DEFAULTS,
    )
    assert contracts.pipelines == before
    assert second["nodes"][1]["params"] == {"preset": "sadtalker"}
    assert second["nodes"][0]["params"]["prompt"] == "y"


def test_unknown_variant_is_rejected(contracts):
    message = rejection({"mode": "fixed_graph", "variant": "nope"}, contracts)
    assert message.startswith('unknown variant "nope"')
    assert "sadtalker" in message


def test_params_for_unknown_node_are_rejected(contracts):
    message = rejection({"mode": "fixed_graph", "variant": "sadtalker", "params": {"ghost": {}}}, contracts)
    assert message.startswith('params for unknown node "ghost"')


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], "params must be an object keyed by node id, got array"),
        ({"script": "loud"}, 'node "script": params must be an object, got string'),
    ],
)
def test_params_of_the_wrong_type_are_rejected(params, expected, contracts):
    assert rejection({"mode": "fixed_graph", "variant": "sadtalker", "params": params}, contracts) == expected


# --- process_graph ----------------------------------------------------------


def test_process_graph_plans_a_caller_graph(contracts):
    request = custom([task("a"), task("b", status="ready")], chain("a", "b"))
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert [n["status"] for n in graph["nodes"]] == ["pending", "ready"]
    assert graph["context"] == {"pipeline": "custom"}
    assert graph["metadata"]["pipeline"] == "custom"
    assert first_error(graph, "graph.schema.json") is None


def test_process_graph_accepts_a_json_string(contracts):
    graph = {"nodes": [task("a"), task("b")], "edges": chain("a", "b")}
    planned = plan({"mode": "process_graph", "graph": json.dumps(graph)}, JOB_ID, contracts, LLM_DEFAULTS)
    assert [n["id"] for n in planned["nodes"]] == ["a", "b"]


def test_bad_json_string_is_rejected(contracts):
    assert rejection({"mode": "process_graph", "graph": "{nodes: "}, contracts).startswith("graph is not valid JSON")


def test_workflow_id_is_always_the_job_id(contracts):
    request = custom([task("a")], [], schema="langgraph.v0", workflowId="someone-else")
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert (graph["schema"], graph["workflowId"]) == ("langgraph.v1", JOB_ID)


def test_given_context_and_metadata_keys_are_kept(contracts):
    request = custom(
        [task("a")], [], context={"pipeline": "mine", "user": "u1"}, metadata={"trace": "t", "planner": "someone"}
    )
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["context"] == {"pipeline": "mine", "user": "u1"}
    assert graph["metadata"] == {"trace": "t", "planner": "spinbot", "version": 1, "pipeline": "mine"}


def test_edge_kind_is_normalised(contracts):
    edges = [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c", "kind": "on_failure"},
        {"from": "b", "to": "d", "kind": None},
    ]
    graph = plan(custom([task("a"), task("b"), task("c"), task("d")], edges), JOB_ID, contracts, LLM_DEFAULTS)
    assert [e["kind"] for e in graph["edges"]] == ["normal", "on_failure", "normal"]


def test_llm_node_of_a_caller_graph_gets_defaults(contracts):
    script = {
        "id": "s",
        "service": "llm.generate_script",
        "plane": "node",
        "params": {"prompt": "p", "temperature": 0.1, "model": None},
    }
    graph = plan(custom([script, task("a")], chain("s", "a")), JOB_ID, contracts, LLM_DEFAULTS)
    assert graph["nodes"][0]["params"] == {**LLM_DEFAULTS, "prompt": "p", "temperature": 0.1}


def test_llm_node_without_params_is_rejected_for_its_prompt(contracts):
    script = {"id": "s", "service": "llm.generate_script", "plane": "node"}
    message = rejection(custom([script], []), contracts)
    assert message == 'node "s": params.prompt: required by llm.generate_script, missing'


def test_caller_input_is_not_mutated(contracts):
    script = {"id": "s", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "p"}}
    request = custom([task("a"), script], chain("a", "s"))
    before = copy.deepcopy(request)
    plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert request == before


# --- rejections -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ([], "a planning request must be a JSON object, got array"),
        ({}, 'mode must be "fixed_graph" or "process_graph", got null'),
        ({"mode": "dream"}, 'mode must be "fixed_graph" or "process_graph", got "dream"'),
        ({"mode": "process_graph"}, "graph must be a JSON object, got null"),
        ({"mode": "process_graph", "graph": "[1]"}, "graph must be a JSON object, got array"),
        ({"mode": "fixed_graph", "variant": 7}, "unknown variant 7"),
    ],
)
def test_malformed_requests_are_rejected(request_, expected, contracts):
    assert rejection(request_, contracts).startswith(expected)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"edges": []}, "graph.nodes must be a non-empty list, got null"),
        ({"nodes": [], "edges": []}, "graph.nodes must be a non-empty list, got []"),
        ({"nodes": {"a": {}}, "edges": []}, "graph.nodes must be a non-empty list"),
        ({"nodes": [task("a")]}, "graph.edges must be a list (use [] for none), got null"),
        ({"nodes": ["a"], "edges": []}, "node 0: must be an object, got string"),
        (
            {"nodes": [task("a"), {"service": "dummy.dummy_task"}], "edges": []},
            "node 1: id must be a non-empty string, got null",
        ),
        ({"nodes": [task(5)], "edges": []}, "node 0: id must be a non-empty string, got 5"),
        ({"nodes": [task("")], "edges": []}, 'node 0: id must be a non-empty string, got ""'),
        ({"nodes": [task("a"), task("b"), task("b")], "edges": []}, 'node "b": duplicate id (nodes 1 and 2)'),
        ({"nodes": [task("a")], "edges": [None]}, "edge 0: must be an object, got null"),
        ({"nodes": [task("a")], "edges": [{"to": "a"}]}, 'edge 0: "from" must be a non-empty string, got null'),
        ({"nodes": [task("a")], "edges": [{"from": "a", "to": 3}]}, 'edge 0: "to" must be a non-empty string, got 3'),
    ],
)
def test_malformed_graphs_are_rejected(graph, expected, contracts):
    assert rejection({"mode": "process_graph", "graph": graph}, contracts).startswith(expected)


def test_edge_to_unknown_node_names_the_edge(contracts):
    edges = [*chain("a", "b", "c"), {"from": "a", "to": "x"}]
    assert rejection(custom([task("a"), task("b"), task("c")], edges), contracts) == 'edge 2 (a -> x): unknown node "x"'


def test_edge_from_unknown_node_names_the_edge(contracts):
    edges = [{"from": "ghost", "to": "a"}]
    assert rejection(custom([task("a")], edges), contracts) == 'edge 0 (ghost -> a): unknown node "ghost"'


def test_graph_without_entry_node_is_rejected(contracts):
    message = rejection(custom([task("a"), task("b")], chain("a", "b", "a")), contracts)
    assert message == "no entry node: every node has an incoming edge"


def test_cycle_names_its_nodes_in_order(contracts):
    edges = chain("start", "a", "b", "c", "a")
    message = rejection(custom([task("start"), task("c"), task("b"), task("a")], edges), contracts)
    assert message == "cycle: c -> a -> b -> c"


def test_self_loop_is_a_cycle(contracts):
    message = rejection(custom([task("a"), task("b")], [*chain("a", "b"), {"from": "b", "to": "b"}]), contracts)
    assert message == "cycle: b -> b"


def test_cycle_behind_a_downstream_node_is_found(contracts):
    # "tail" hangs off the cycle; it is not on it and must not be named.
    edges = chain("a", "b", "c", "b") + chain("c", "tail")
    message = rejection(custom([task("a"), task("b"), task("c"), task("tail")], edges), contracts)
    assert message == "cycle: b -> c -> b"


def test_unreachable_nodes_are_named(contracts):
    nodes = [task("a"), task("b"), task("island"), task("x"), task("y")]
    message = rejection(custom(nodes, chain("a", "b") + chain("x", "y")), contracts)
    assert message == 'unreachable nodes (not connected to entry node "a"): "island", "x", "y"'


def test_connection_ignores_edge_direction(contracts):
    # b and c are both entries; c reaches the first entry's component only against an edge's direction.
    request = custom([task("b"), task("c"), task("d")], [{"from": "b", "to": "d"}, {"from": "c", "to": "d"}])
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    assert [n["id"] for n in graph["nodes"]] == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            {"id": "a", "service": "generate.f5_to_tts", "plane": "node"},
            'node "a": unknown service "generate.f5_to_tts" for plane "node"',
        ),
        (
            {"id": "a", "service": "llm.generate_script", "plane": "python"},
            'node "a": unknown service "llm.generate_script" for plane "python"',
        ),
        (
            {"id": "a", "service": "made.up", "plane": "python"},
            'node "a": unknown service "made.up" for plane "python"',
        ),
        ({"id": "a", "service": ["x"], "plane": "python"}, 'node "a": unknown service ["x"] for plane "python"'),
        (
            {"id": "a", "service": "dummy.dummy_task", "plane": "gpu"},
            'node "a": plane must be "node" or "python", got "gpu"',
        ),
        ({"id": "a", "service": "dummy.dummy_task"}, 'node "a": plane must be "node" or "python", got null'),
    ],
)
def test_unknown_services_are_rejected(node, expected, contracts):
    assert rejection(custom([node], []), contracts).startswith(expected)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        (
            {"nodes": [task("a", color="red")], "edges": []},
            "node \"a\": nodes/0: Additional properties are not allowed ('color' was unexpected)",
        ),
        (
            {"nodes": [task("a"), task("b")], "edges": [{"from": "a", "to": "b", "weight": 1}]},
            "edge 0 (a -> b): edges/0: Additional properties are not allowed ('weight' was unexpected)",
        ),
        (
            {"nodes": [task("a")], "edges": [], "owner": "me"},
            "graph: (root): Additional properties are not allowed ('owner' was unexpected)",
        ),
        (
            {"nodes": [task("a"), task("b", status="done")], "edges": chain("a", "b")},
            'node "b": status must be "pending" or "ready" on submission, got "done"',
        ),
        (
            {"nodes": [task("a", progressWeight=-1)], "edges": []},
            'node "a": nodes/0/progressWeight: -1 is less than the minimum of 0',
        ),
        (
            {"nodes": [task("a"), task("b")], "edges": [{"from": "a", "to": "b", "kind": "maybe"}]},
            "edge 0 (a -> b): edges/0/kind:",
        ),
    ],
)
def test_schema_violations_name_the_node_or_edge(graph, expected, contracts):
    assert rejection({"mode": "process_graph", "graph": graph}, contracts).startswith(expected)


@pytest.mark.parametrize(("key", "value"), [("context", []), ("metadata", "x")])
def test_free_form_sections_must_be_objects(key, value, contracts):
    assert rejection(custom([task("a")], [], **{key: value}), contracts).startswith(f"graph.{key} must be an object")


def test_context_pipeline_must_be_a_string(contracts):
    message = rejection(custom([task("a")], [], context={"pipeline": 3}), contracts)
    assert message == "graph.context.pipeline must be a string, got number"


def test_empty_job_id_is_rejected(contracts):
    with pytest.raises(PlanningError, match="workflowId"):
        plan(custom([task("a")], []), "", contracts, LLM_DEFAULTS)


@pytest.mark.parametrize(("node_count", "edge_count"), [(MAX_NODES + 1, 0), (1, MAX_EDGES + 1)])
def test_oversized_graphs_are_rejected(node_count, edge_count, contracts):
    nodes = [task(f"n{i}") for i in range(node_count)]
    edges = [{"from": "n0", "to": "n0"}] * edge_count
    assert rejection(custom(nodes, edges), contracts).startswith("graph too large")


def test_largest_allowed_graph_plans(contracts):
    nodes = [task(f"n{i}") for i in range(MAX_NODES)]
    graph = plan(custom(nodes, chain(*(n["id"] for n in nodes))), JOB_ID, contracts, LLM_DEFAULTS)
    assert len(graph["nodes"]) == MAX_NODES


def test_deeply_nested_json_is_a_rejection(contracts):
    deep = "[" * 100_000 + "]" * 100_000
    text = (
        '{"nodes": [{"id": "a", "service": "dummy.dummy_task", "plane": "python", "input": ' + deep + '}], "edges": []}'
    )
    assert rejection({"mode": "process_graph", "graph": text}, contracts) == "graph is nested too deeply"


def test_a_graph_nested_deeper_than_the_streams_take_is_a_rejection(contracts):
    """Before, 70 levels inside a node's params planned (200), then the data plane set the graph aside as a dead
    letter, and the job showed `running` until its segment's timeout (2 h)."""
    deep: list = []
    for _ in range(70):
        deep = [deep]
    node = {**task("a"), "params": {"x": deep}}
    assert rejection(custom([node], []), contracts) == "graph: nested deeper than 64 levels"
    for _ in range(20):
        deep = deep[0]
    node["params"] = {"x": deep}  # 50 levels: room for the graph around it
    assert plan(custom([node], []), JOB_ID, contracts, LLM_DEFAULTS)["nodes"][0]["params"]


# --- the door: text, params, statuses, endpoints (issue 8) -------------------


@pytest.mark.parametrize(
    ("request_", "where"),
    [
        (
            {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "a\ud800b"}}},
            "request/params/script/prompt",
        ),
        ({"mode": "fixed_graph", "variant": "sadtalker\udfff"}, "request/variant"),
        (
            {"mode": "process_graph", "graph": {"nodes": [task("a", name="\udc00")], "edges": []}},
            "request/graph/nodes/0/name",
        ),
        (
            {"mode": "process_graph", "graph": {"nodes": [task("a", params={"\ud83d": 1})], "edges": []}},
            "request/graph/nodes/0/params key",
        ),
        # Escaped inside a JSON string graph: only visible once the planner decodes it.
        (
            {"mode": "process_graph", "graph": '{"nodes": [{"id": "a\\ud800", "service": "x"}], "edges": []}'},
            "graph/nodes/0/id",
        ),
    ],
)
def test_lone_surrogates_are_rejected_naming_where(request_, where, contracts):
    message = rejection(request_, contracts)
    assert message == f"{where}: contains a lone UTF-16 surrogate (not valid Unicode text)"
    message.encode("utf-8")  # the message itself can be sent


def test_a_real_astral_character_is_fine(contracts):
    request = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "a fox \U0001f98a"}}}
    assert plan(request, JOB_ID, contracts, LLM_DEFAULTS)["nodes"][0]["params"]["prompt"] == "a fox \U0001f98a"


def script_request(**params) -> dict:
    return {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": params}}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (script_request(), 'node "script": params.prompt: required by llm.generate_script, missing'),
        (script_request(prompt=None), 'node "script": params.prompt: required by llm.generate_script, missing'),
        (script_request(prompt=""), 'node "script": params.prompt: must not be blank, got ""'),
        (script_request(prompt=" \n "), 'node "script": params.prompt: must not be blank, got " \\n "'),
        (script_request(prompt=7), 'node "script": params.prompt: must be of type string, got 7'),
        (
            script_request(prompt="p", temperature="hot"),
            'node "script": params.temperature: must be of type number, got "hot"',
        ),
        (
            script_request(prompt="p", temperature=True),
            'node "script": params.temperature: must be of type number, got true',
        ),
        (script_request(prompt="p", temperature=-0.5), 'node "script": params.temperature: must be >= 0, got -0.5'),
        (script_request(prompt="p", timeoutMs=-1), 'node "script": params.timeoutMs: must be > 0, got -1'),
        (script_request(prompt="p", timeoutMs=0), 'node "script": params.timeoutMs: must be > 0, got 0'),
        (
            script_request(prompt="p", timeoutMs="soon"),
            'node "script": params.timeoutMs: must be of type integer, got "soon"',
        ),
        (script_request(prompt="p", model=""), 'node "script": params.model: must have at least 1 characters, got ""'),
        (
            script_request(prompt="p", length=[1]),
            'node "script": params.length: must be of type string|integer, got [1]',
        ),
        (
            {"mode": "fixed_graph", "variant": "sadtalker", "params": {**SCRIPT, "train_voice": {"preset": 5}}},
            'node "train_voice": params.preset: must be of type string, got 5',
        ),
        (
            custom([task("a", params={"preset": {"x": 1}})], []),
            'node "a": params.preset: must be of type string, got {"x": 1}',
        ),
        (
            custom([{"id": "u", "service": "artifacts.upload_artifact", "plane": "node"}], []),
            'node "u": params.files: required by artifacts.upload_artifact, missing',
        ),
        (
            custom([{"id": "u", "service": "artifacts.upload_artifact", "plane": "node", "params": {"files": []}}], []),
            'node "u": params.files: must have at least 1 items, got []',
        ),
        (
            custom(
                [{"id": "u", "service": "artifacts.upload_artifact", "plane": "node", "params": {"files": [{}, 7]}}],
                [],
            ),
            "node \"u\": params.files/1: 7 is not of type 'object'",
        ),
    ],
)
def test_params_are_checked_against_the_manifest(request_, expected, contracts):
    assert rejection(request_, contracts) == expected


def test_declared_params_of_the_right_types_and_undeclared_params_pass(contracts):
    request = script_request(prompt="p", temperature=0, timeoutMs=1500.0, length=30, mood="any thing")
    params = plan(request, JOB_ID, contracts, LLM_DEFAULTS)["nodes"][0]["params"]
    assert (params["temperature"], params["timeoutMs"], params["length"], params["mood"]) == (
        0,
        1500.0,
        30,
        "any thing",
    )


@pytest.mark.parametrize("status", ["running", "completed", "failed", "skipped"])
def test_only_waiting_statuses_are_accepted(status, contracts):
    message = rejection(custom([task("a"), task("b", status=status)], chain("a", "b")), contracts)
    assert message == f'node "b": status must be "pending" or "ready" on submission, got "{status}"'


def test_a_graph_preset_completed_is_rejected(contracts):
    nodes = [task("a", status="completed", output={"currentProgress": 1}), task("b", status="completed")]
    assert rejection(custom(nodes, chain("a", "b")), contracts).startswith('node "a": status must be')


@pytest.mark.parametrize(
    "endpoint",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:6379",
        "http://llm:11434.evil.example",
        "gopher://llm:11434",
    ],
)
def test_a_caller_chosen_llm_endpoint_is_rejected(endpoint, contracts):
    message = rejection(script_request(prompt="p", endpoint=endpoint), contracts)
    assert message.startswith(f'node "script": params.endpoint {json.dumps(endpoint)} is not an allowed LLM endpoint')


def test_a_caller_graph_cannot_name_an_endpoint_either(contracts):
    params = {"prompt": "p", "endpoint": "http://10.0.0.1:11434"}
    script = {"id": "s", "service": "llm.generate_script", "plane": "node", "params": params}
    assert "not an allowed LLM endpoint" in rejection(custom([script], []), contracts)


def test_settings_endpoints_are_allowed(contracts):
    allowed = ["http://llm:11434", "http://gpu-box:11434/"]
    for endpoint in ("http://llm:11434/", "http://gpu-box:11434"):
        graph = plan(script_request(prompt="p", endpoint=endpoint), JOB_ID, contracts, LLM_DEFAULTS, allowed)
        assert graph["nodes"][0]["params"]["endpoint"] == endpoint
    with pytest.raises(PlanningError, match="not an allowed LLM endpoint"):
        plan(script_request(prompt="p", endpoint="http://other:1"), JOB_ID, contracts, LLM_DEFAULTS, allowed)


def test_templates_still_check_without_a_prompt(contracts):
    from core.planner import check_templates

    check_templates(contracts, LLM_DEFAULTS)


# --- infinitetalk -----------------------------------------------------------


def test_infinitetalk_request_shape():
    request = infinitetalk_request("Say hi", "Hello there", "images/u1.png", "audio/u2.wav", LLM_DEFAULTS)
    assert request == {
        "mode": "fixed_graph",
        "variant": "f5tts_infinitetalk",
        "params": {
            "script": {
                "prompt": "Say hi",
                "tone": "friendly",
                "length": "short",
                "persona": "narrator",
                **LLM_DEFAULTS,
            },
            "f5_to_tts": {"audioPath": "input/audio/u2.wav", "refText": "Hello there"},
            "infinite_talk": {"imagePath": "input/images/u1.png"},
        },
    }


def test_infinitetalk_request_plans(contracts):
    request = infinitetalk_request(
        "p", "r", "images/a.png", "audio/b.wav", LLM_DEFAULTS, tone="calm", length=30, persona="chef"
    )
    graph = plan(request, JOB_ID, contracts, LLM_DEFAULTS)
    script = graph["nodes"][0]["params"]
    assert (script["tone"], script["length"], script["persona"]) == ("calm", 30, "chef")
    assert graph["context"]["pipeline"] == "f5tts_infinitetalk"
    assert first_error(graph, "graph.schema.json") is None


# --- property: garbage never escapes as anything but PlanningError ----------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
node_ids = st.sampled_from(["a", "b", "c"])
# Mostly well-formed parts with garbage mixed in, so examples get past the early checks too.
garbage_nodes = st.fixed_dictionaries(
    {
        "id": node_ids | node_ids | json_values,
        "service": st.sampled_from(["dummy.dummy_task", "llm.generate_script", "made.up"]) | json_values,
        "plane": st.sampled_from(["node", "python", "python"]) | json_values,
    },
    optional={"status": json_values, "params": json_values, "tags": json_values},
)
garbage_edges = st.fixed_dictionaries(
    {"from": node_ids | node_ids | json_values, "to": node_ids | node_ids | json_values},
    optional={"kind": st.sampled_from(["normal", "on_failure"]) | json_values},
)
garbage_graphs = st.fixed_dictionaries(
    {
        "nodes": st.lists(garbage_nodes, min_size=1, max_size=4) | json_values,
        "edges": st.lists(garbage_edges, max_size=5) | json_values,
    },
    optional={"context": json_values, "metadata": json_values},
)
garbage_requests = (
    json_values
    | st.fixed_dictionaries(
        {"mode": st.just("process_graph"), "graph": garbage_graphs | garbage_graphs.map(json.dumps) | json_values}
    )
    | st.fixed_dictionaries(
        {"mode": st.just("fixed_graph"), "variant": st.sampled_from(sorted(PIPELINES)) | json_values},
        optional={
            "params": st.dictionaries(
                st.sampled_from(["script", "train_voice", "ghost"]) | st.text(max_size=4), json_values, max_size=3
            )
            | json_values
        },
    )
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=garbage_requests)
def test_garbage_requests_only_raise_planning_error(request):
    try:
        graph = plan(request, JOB_ID, shipped_contracts(), LLM_DEFAULTS)
    except PlanningError as exc:
        assert str(exc)
    else:
        assert first_error(graph, "graph.schema.json") is None


def _is_acyclic(ids, pairs):
    remaining, links = set(ids), set(pairs)
    while True:
        sources = {n for n in remaining if not any(b == n and a in remaining for a, b in links)}
        if not sources:
            return not remaining
        remaining -= sources


def _is_connected(ids, pairs):
    groups = [{n} for n in ids]
    for a, b in pairs:
        group_a = next(g for g in groups if a in g)
        group_b = next(g for g in groups if b in g)
        if group_a is not group_b:
            groups.remove(group_b)
            group_a |= group_b
    return len(groups) == 1


random_shapes = st.integers(1, 6).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=9))
)


@settings(max_examples=300, deadline=None)
@given(shape=random_shapes)
def test_exactly_the_connected_dags_are_accepted(shape):
    count, pairs = shape
    ids = [f"n{i}" for i in range(count)]
    links = [(ids[a], ids[b]) for a, b in pairs]
    request = custom([task(node_id) for node_id in ids], [{"from": a, "to": b} for a, b in links])
    try:
        plan(request, JOB_ID, shipped_contracts(), LLM_DEFAULTS)
        accepted = True
    except PlanningError as exc:
        assert str(exc).startswith(("cycle: ", "no entry node", "unreachable nodes"))
        accepted = False
    assert accepted == (_is_acyclic(ids, links) and _is_connected(ids, links))


@settings(max_examples=200, deadline=None)
@given(shape=random_shapes)
def test_a_named_cycle_is_a_real_cycle(shape):
    count, pairs = shape
    ids = [f"n{i}" for i in range(count)]
    links = {(ids[a], ids[b]) for a, b in pairs}
    request = custom([task(node_id) for node_id in ids], [{"from": a, "to": b} for a, b in sorted(links)])
    try:
        plan(request, JOB_ID, shipped_contracts(), LLM_DEFAULTS)
    except PlanningError as exc:
        if str(exc).startswith("cycle: "):
            named = str(exc).removeprefix("cycle: ").split(" -> ")
            assert named[0] == named[-1]
            assert all(step in links for step in itertools.pairwise(named))
