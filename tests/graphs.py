"""Job graphs of a chosen size, for the tests and the benchmark: script and python nodes in turn."""

from __future__ import annotations


def alternating_graph(count: int, fan_out: int = 1) -> dict:
    """A process_graph request of `count` nodes alternating planes (script, python, script...); each node feeds
    the next `fan_out` nodes, so edges ≈ count × fan_out (a chain when fan_out is 1)."""
    nodes: list[dict] = []
    for i in range(count):
        if i % 2 == 0:
            nodes.append({"id": f"n{i}", "service": "llm.generate_script", "plane": "node", "params": {"prompt": "p"}})
        else:
            nodes.append({"id": f"n{i}", "service": "dummy.dummy_task", "plane": "python"})
    for node in nodes:
        node.update(status="pending", progressWeight=1)
    edges = [{"from": f"n{i}", "to": f"n{j}"} for i in range(count) for j in range(i + 1, min(count, i + 1 + fan_out))]
    return {"mode": "process_graph", "graph": {"schema": "langgraph.v1", "nodes": nodes, "edges": edges}}
