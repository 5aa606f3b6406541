"""Schema validators with their `$ref`s inlined (jsonschema resolves each one on every validation otherwise): every
shipped schema is inlined, and the inlined validators judge documents exactly as the referencing ones do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from config import CONFIG_DIR, SCHEMA_DIR
from core import contracts
from tests.graphs import alternating_graph

SCHEMAS = sorted(SCHEMA_DIR.glob("*.schema.json"))
TARGETS = [
    (path.name, definition) for path in SCHEMAS for definition in (None, *json.loads(path.read_text()).get("$defs", {}))
]
JOB_ID = "2b1f1e7e-4b7a-4a51-8a7e-0e7b0f0e1c11"


def _referencing(schema_file: str, definition: str | None) -> Draft202012Validator:
    """The validator as it was before inlining: the schema as written, each `$ref` resolved by the registry."""
    registry = contracts._registry()
    schema = {"$ref": f"{schema_file}#/$defs/{definition}"} if definition else registry.contents(schema_file)
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


def _documents() -> list:
    graph = alternating_graph(6)["graph"]
    node = graph["nodes"][0]
    config = [json.loads(path.read_text()) for path in sorted(CONFIG_DIR.glob("*.json"))]
    return [
        *config,
        graph,
        {**graph, "nodes": [{**node, "status": "bogus"}]},
        {**graph, "edges": [{"from": 1}]},
        node,
        {**node, "plane": "gpu"},
        {"jobId": JOB_ID, "status": "running", "source": "control-plane", "created": "1795656075000"},
        {"jobId": JOB_ID, "status": "done"},
        {"jobId": JOB_ID, "progress": "0.5", "created": "2026-11-25T10:00:00Z"},
        {"jobId": JOB_ID, "progress": "hot"},
        {"jobId": JOB_ID, "progress": 0.2, "created": "yesterday"},
        {"jobId": 5, "data": None},
        {"jobId": "", "status": "failed", "error": "why"},
        {"from": "a", "to": "b"},
        {"name": "x", "type": "string"},
        {"name": 3},
        [],
        None,
        "text",
        1e308,
    ]


@pytest.mark.parametrize(("schema_file", "definition"), TARGETS, ids=lambda t: str(t))
def test_every_shipped_schema_is_inlined(schema_file, definition):
    schema = contracts.validator(schema_file, definition).schema
    assert '"$ref"' not in json.dumps({k: v for k, v in schema.items() if k != "$defs"})


@pytest.mark.parametrize(("schema_file", "definition"), TARGETS, ids=lambda t: str(t))
def test_inlined_validators_judge_as_the_referencing_ones(schema_file, definition):
    inlined, referencing = contracts.validator(schema_file, definition), _referencing(schema_file, definition)
    for document in _documents():
        found = sorted((list(e.absolute_path), e.message) for e in inlined.iter_errors(document))
        expected = sorted((list(e.absolute_path), e.message) for e in referencing.iter_errors(document))
        assert found == expected, (schema_file, definition, document)


def test_a_recursive_schema_keeps_its_references(monkeypatch, tmp_path: Path):
    tree = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "tree.schema.json",
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    }
    registry = Registry().with_resources([("tree.schema.json", Resource.from_contents(tree))])
    monkeypatch.setattr(contracts, "_registry", lambda: registry)
    contracts.validator.cache_clear()
    try:
        checker = contracts.validator("tree.schema.json")
        assert checker.schema == tree, "left as written: inlining a cycle would never end"
        assert contracts.first_error({"children": [{"children": [{"value": "x"}]}]}, "tree.schema.json") == (
            "children/0/children/0/value: 'x' is not of type 'integer'"
        )
    finally:
        contracts.validator.cache_clear()
