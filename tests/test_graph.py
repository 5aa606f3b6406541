"""Pure graph logic: readiness, merged inputs, progress, handback merges, skipping and retries."""

from __future__ import annotations

import copy
import math

import pytest

from workflows.graph import (
    all_completed,
    clamp_progress,
    drop_nulls,
    failed_nodes,
    job_progress,
    merge_handback,
    merged_input,
    ready_nodes,
    reset_for_retry,
    skip_unreachable,
)


def node(node_id, status="pending", plane="python", **fields):
    return {"id": node_id, "service": "dummy.dummy_task", "plane": plane, "status": status, **fields}


def graph(nodes, edges=()):
    return {
        "schema": "langgraph.v1",
        "workflowId": "job-1",
        "nodes": nodes,
        "edges": [{"from": a, "to": b, "kind": "normal"} for a, b in edges],
    }


def ids(nodes):
    return [n["id"] for n in nodes]


def statuses(g):
    return {n["id"]: n["status"] for n in g["nodes"]}


DIAMOND = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]


# --- ready_nodes ------------------------------------------------------------


def test_chain_runs_one_node_at_a_time():
    g = graph([node("a"), node("b"), node("c")], [("a", "b"), ("b", "c")])
    assert ids(ready_nodes(g)) == ["a"]
    g["nodes"][0]["status"] = "completed"
    assert ids(ready_nodes(g)) == ["b"]
    g["nodes"][1]["status"] = "running"
    assert ready_nodes(g) == []


def test_diamond_waits_for_both_branches():
    g = graph([node("a", "completed"), node("b", "completed"), node("c", "running"), node("d")], DIAMOND)
    assert ready_nodes(g) == []
    g["nodes"][2]["status"] = "completed"
    assert ids(ready_nodes(g)) == ["d"]


def test_diamond_branches_are_ready_together():
    g = graph([node("a", "completed"), node("b"), node("c", "ready"), node("d")], DIAMOND)
    assert ids(ready_nodes(g)) == ["b", "c"]


def test_plane_filter():
    g = graph([node("s", "completed", plane="node"), node("x"), node("y", plane="node")], [("s", "x"), ("s", "y")])
    assert ids(ready_nodes(g, plane="python")) == ["x"]
    assert ids(ready_nodes(g, plane="node")) == ["y"]
    assert ids(ready_nodes(g)) == ["x", "y"]


@pytest.mark.parametrize("upstream", ["failed", "skipped", "running", "pending"])
def test_unfinished_upstream_blocks(upstream):
    g = graph([node("a", upstream), node("b")], [("a", "b")])
    assert "b" not in ids(ready_nodes(g))


@pytest.mark.parametrize("status", ["running", "completed", "failed", "skipped"])
def test_only_pending_or_ready_nodes_are_ready(status):
    assert ready_nodes(graph([node("a", status)])) == []


# --- merged_input -----------------------------------------------------------


def test_upstream_outputs_merge_in_edge_order():
    g = graph(
        [
            node("first", "completed", output={"k": "first", "x": 1}),
            node("second", "completed", output={"k": "second"}),
            node("t"),
        ],
        [("second", "t"), ("first", "t")],
    )
    assert merged_input(g, g["nodes"][2]) == {"k": "first", "x": 1}


def test_node_input_comes_first_and_upstream_wins():
    g = graph(
        [
            node("up", "completed", output={"currentProgress": 0.3, "k": "up"}),
            node("t", input={"k": "own", "only": True}),
        ],
        [("up", "t")],
    )
    assert merged_input(g, g["nodes"][1]) == {"k": "up", "only": True, "currentProgress": 0.3}


@pytest.mark.parametrize("output", [None, "text", ["a", "b"], 3])
def test_non_object_outputs_are_ignored(output):
    g = graph(
        [node("junk", "completed", output=output), node("ok", "completed", output={"v": 1}), node("t")],
        [("junk", "t"), ("ok", "t")],
    )
    assert merged_input(g, g["nodes"][2]) == {"v": 1}


def test_non_object_own_input_is_ignored_and_not_mutated():
    own = {"a": 1}
    g = graph(
        [node("up", "completed", output={"b": 2}), node("t", input=own), node("u", input="raw")],
        [("up", "t"), ("up", "u")],
    )
    assert merged_input(g, g["nodes"][1]) == {"a": 1, "b": 2}
    assert own == {"a": 1}
    assert merged_input(g, g["nodes"][2]) == {"b": 2}


# --- progress ---------------------------------------------------------------


def test_progress_is_completed_weight():
    g = graph(
        [node("s", "completed", progressWeight=0.05), node("t", progressWeight=0.1), node("u", progressWeight=0.85)]
    )
    assert job_progress(g) == pytest.approx(0.05)
    assert job_progress(g, also_done=["t"]) == pytest.approx(0.15)


def test_svd_wav2lip_weights_are_normalised():
    weights = {"script": 0.05, "train_voice": 0.25, "train_lora": 0.5, "generate_video": 0.4, "postprocess_video": 0.3}
    assert sum(weights.values()) == pytest.approx(1.5)
    g = graph([node(n, progressWeight=w) for n, w in weights.items()])
    for n in g["nodes"][:3]:
        n["status"] = "completed"
    assert job_progress(g) == pytest.approx(0.8 / 1.5)
    for n in g["nodes"]:
        n["status"] = "completed"
    assert job_progress(g) == 1.0


def test_zero_or_missing_weights_count_every_node_the_same():
    g = graph([node("a", "completed", progressWeight=0), node("b", progressWeight=None), node("c"), node("d")])
    assert job_progress(g) == pytest.approx(0.25)


def test_unweighted_node_adds_nothing_when_others_are_weighted():
    g = graph([node("a", "completed"), node("b", progressWeight=1)])
    assert job_progress(g) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, 0.5),
        (1, 1.0),
        ("0.25", 0.25),
        (" 0.75 ", 0.75),
        ("1e-1", 0.1),
        (1.7, 1.0),
        ("3", 1.0),
        (-0.2, 0.0),
        ("-5", 0.0),
        (float("nan"), 0.0),
        ("nan", 0.0),
        (float("inf"), 1.0),
        (None, 0.0),
        ("half", 0.0),
        ("", 0.0),
        ({"progress": 1}, 0.0),
        ([0.5], 0.0),
    ],
)
def test_clamp_progress(value, expected):
    result = clamp_progress(value)
    assert isinstance(result, float) and not math.isnan(result)
    assert result == pytest.approx(expected)


# --- handbacks --------------------------------------------------------------


def worker_handback():
    """A handback as the existing worker serialises it: null for every optional field it did not receive."""
    return {
        "schema": "langgraph.v1",
        "workflowId": "job-1",
        "context": None,
        "metadata": {"handoff": {"segment": 1, "attempt": 1}},
        "nodes": [
            {
                "id": "a",
                "service": "dummy.dummy_task",
                "plane": "python",
                "status": "completed",
                "name": None,
                "params": None,
                "input": None,
                "output": {"v": 0, "flag": False, "text": ""},
                "error": None,
                "retries": None,
                "tags": None,
                "telemetry": None,
                "progressWeight": None,
            },
        ],
        "edges": [{"from": "a", "to": "b", "kind": "normal", "metadata": None}],
    }


def test_drop_nulls_removes_every_null_but_keeps_falsy_values():
    clean = drop_nulls(worker_handback())
    assert "context" not in clean
    assert clean["metadata"] == {"handoff": {"segment": 1, "attempt": 1}}
    assert clean["nodes"] == [
        {
            "id": "a",
            "service": "dummy.dummy_task",
            "plane": "python",
            "status": "completed",
            "output": {"v": 0, "flag": False, "text": ""},
        }
    ]
    assert clean["edges"] == [{"from": "a", "to": "b", "kind": "normal"}]


def test_drop_nulls_treats_null_lists_as_absent():
    # Absent, the schema then rejects the graph for lacking nodes rather than passing an empty one.
    assert drop_nulls({"schema": "langgraph.v1", "nodes": None, "edges": None}) == {"schema": "langgraph.v1"}


def test_drop_nulls_leaves_garbage_items_for_the_schema():
    assert drop_nulls({"nodes": [1, {"id": "a", "name": None}], "edges": ["x"]}) == {
        "nodes": [1, {"id": "a"}],
        "edges": ["x"],
    }


def test_drop_nulls_does_not_mutate():
    handback = worker_handback()
    before = copy.deepcopy(handback)
    drop_nulls(handback)
    assert handback == before


def ours():
    return graph(
        [
            node(
                "s",
                "completed",
                plane="node",
                output={"narration": "hi", "currentProgress": 0.05},
                params={"prompt": "p"},
            ),
            node("t", "running", input={"narration": "hi"}, params={"preset": "x"}, progressWeight=0.5),
            node("u", progressWeight=0.45),
        ],
        [("s", "t"), ("t", "u")],
    )


def test_merge_takes_python_fields_from_the_handback():
    theirs = ours()
    theirs["nodes"][1].update(status="completed", output={"audioArtifact": {"key": "k"}}, telemetry={"ms": 5})
    theirs["nodes"][2].update(status="failed", error={"message": "boom"})
    merged = merge_handback(ours(), theirs)
    assert statuses(merged) == {"s": "completed", "t": "completed", "u": "failed"}
    assert merged["nodes"][1]["output"] == {"audioArtifact": {"key": "k"}}
    assert merged["nodes"][1]["telemetry"] == {"ms": 5}
    assert merged["nodes"][2]["error"] == {"message": "boom"}


def test_merge_never_changes_what_the_worker_does_not_own():
    theirs = ours()
    theirs["nodes"][1].update(params={"preset": "hacked"}, progressWeight=9, service="other.thing", status="completed")
    merged = merge_handback(ours(), theirs)
    assert merged["nodes"][1]["params"] == {"preset": "x"}
    assert merged["nodes"][1]["progressWeight"] == 0.5
    assert merged["nodes"][1]["service"] == "dummy.dummy_task"


@pytest.mark.parametrize("claimed_plane", ["node", "python"])
def test_merge_never_overwrites_a_node_plane_node(claimed_plane):
    theirs = ours()
    theirs["nodes"][0].update(
        plane=claimed_plane, status="failed", output={"narration": "changed"}, error={"message": "x"}
    )
    merged = merge_handback(ours(), theirs)
    assert merged["nodes"][0] == ours()["nodes"][0]


def test_merge_ignores_unknown_nodes_and_missing_ones():
    theirs = ours()
    theirs["nodes"] = [node("ghost", "completed", output={"x": 1}), {**theirs["nodes"][2], "status": "completed"}]
    merged = merge_handback(ours(), theirs)
    assert ids(merged["nodes"]) == ["s", "t", "u"]
    assert statuses(merged) == {"s": "completed", "t": "running", "u": "completed"}
    assert merged["nodes"][1]["input"] == {"narration": "hi"}


def test_merge_of_a_cleaned_handback_clears_fields_the_worker_dropped():
    # After drop_nulls an absent worker field means the worker holds no value; status is kept when absent.
    base = ours()
    base["nodes"][2]["error"] = {"message": "old attempt"}
    theirs = drop_nulls(ours())
    del theirs["nodes"][2]["status"]
    merged = merge_handback(base, theirs)
    assert "error" not in merged["nodes"][2]
    assert merged["nodes"][2]["status"] == "pending"


def test_merge_does_not_mutate_either_graph():
    base, theirs = ours(), ours()
    theirs["nodes"][1].update(status="completed", output={"o": [1]})
    base_before, theirs_before = copy.deepcopy(base), copy.deepcopy(theirs)
    merged = merge_handback(base, theirs)
    merged["nodes"][1]["status"] = "failed"
    assert base == base_before
    assert theirs == theirs_before


# --- finishing and retrying -------------------------------------------------


def test_skip_unreachable_skips_every_waiting_node():
    g = graph(
        [node("a", "completed"), node("b", "failed"), node("c"), node("d", "ready"), node("e", "running")],
        [("a", "b"), ("b", "c"), ("a", "d"), ("a", "e")],
    )
    assert skip_unreachable(g) == ["c", "d"]
    assert statuses(g) == {"a": "completed", "b": "failed", "c": "skipped", "d": "skipped", "e": "running"}
    assert ids(failed_nodes(g)) == ["b"]
    assert skip_unreachable(g) == []


def test_reset_for_retry_keeps_completed_work():
    g = graph(
        [
            node("a", "completed", output={"v": 1}),
            node("b", "failed", output={"partial": True}, error={"message": "boom"}),
            node("c", "skipped"),
            node("d", "running", output={"half": 1}),
        ],
        [("a", "b"), ("b", "c"), ("a", "d")],
    )
    before = copy.deepcopy(g)
    fresh = reset_for_retry(g)
    assert g == before
    assert statuses(fresh) == {"a": "completed", "b": "pending", "c": "pending", "d": "pending"}
    assert fresh["nodes"][0]["output"] == {"v": 1}
    assert all("error" not in n and "output" not in n for n in fresh["nodes"][1:])
    assert ids(ready_nodes(fresh)) == ["b", "d"]


def test_all_completed():
    assert all_completed(graph([node("a", "completed"), node("b", "completed")]))
    assert not all_completed(graph([node("a", "completed"), node("b", "skipped")]))
