"""Schema validators with their `$ref`s inlined (jsonschema resolves each one on every validation otherwise): every
shipped schema is inlined, and the inlined validators judge documents exactly as the referencing ones do."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
from jsonschema import FormatChecker
from jsonschema.protocols import Validator
from referencing import Registry, Resource

from config import CONFIG_DIR, SCHEMA_DIR
from core import schemas
from tests.graphs import alternating_graph

SCHEMAS = sorted(SCHEMA_DIR.glob("*.schema.json"))
TARGETS = [
    (path.name, definition) for path in SCHEMAS for definition in (None, *json.loads(path.read_text()).get("$defs", {}))
]
JOB_ID = "2b1f1e7e-4b7a-4a51-8a7e-0e7b0f0e1c11"


def _referencing(schema_file: str, definition: str | None) -> Validator:
    """The validator as it was before inlining: the schema as written, each `$ref` resolved by the registry."""
    registry = schemas._registry()
    schema = {"$ref": f"{schema_file}#/$defs/{definition}"} if definition else registry.contents(schema_file)
    return schemas.JsonValidator(schema, registry=registry, format_checker=FormatChecker())


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
    schema = schemas.validator(schema_file, definition).schema
    assert '"$ref"' not in json.dumps({k: v for k, v in schema.items() if k != "$defs"})


@pytest.mark.parametrize(("schema_file", "definition"), TARGETS, ids=lambda t: str(t))
def test_inlined_validators_judge_as_the_referencing_ones(schema_file, definition):
    inlined, referencing = schemas.validator(schema_file, definition), _referencing(schema_file, definition)
    for document in _documents():
        found = sorted((list(e.absolute_path), e.message) for e in inlined.iter_errors(document))
        expected = sorted((list(e.absolute_path), e.message) for e in referencing.iter_errors(document))
        assert found == expected, (schema_file, definition, document)


def _with_each_field_replaced(document: dict) -> list[dict]:
    """`document` with each of its fields, in turn, set to each value a hostile or careless sender might write."""
    odd: list[object] = [
        *(float(x) for x in ("nan", "inf", "-inf")),
        *(10**30, -(10**30), True, False, 1.0, -1.0, 0, None, [], {}, (), ("a",), ({},)),
        *(
            "a\udc80",
            "123\n",
            "1795656075000\n",
            "\x1c0.5\x1c",
            "\u00a00.5",
            " 0.5 ",
            "\u0663\u0664",
            "\U0001f600" * 201,
        ),
        *("2026-02-30T00:00:00Z", "2026-11-25t10:00:00z", "2026-12-31T23:59:60Z", "2026-11-25T10:00:00", ""),
    ]
    return [{**document, key: value} for key in document for value in odd] + [{**document, "a\udc80": 1}]


def _hostile_documents() -> list:
    graph = {**alternating_graph(6)["graph"], "workflowId": JOB_ID}
    node, edge = graph["nodes"][0], graph["edges"][0]
    messages = [
        {"jobId": JOB_ID, "status": "failed", "source": "control-plane", "created": "1795656075000", "error": None},
        {"jobId": JOB_ID, "progress": "0.5", "created": "2026-11-25T10:00:00Z", "eventId": "e"},
        {"jobId": JOB_ID, "data": "{}", "created": 1795656075000},
    ]
    bases = [graph, node, edge, *messages]
    return [
        *(variant for base in bases for variant in _with_each_field_replaced(base)),
        {**graph, "nodes": [variant for variant in _with_each_field_replaced(node)][:50]},
        {**graph, "nodes": tuple(graph["nodes"]), "edges": tuple(graph["edges"])},
        {"jobId": JOB_ID, "data": _nested(60)},  # the wire refuses deeper (core/wire.py's MAX_DEPTH)
    ]


def _nested(depth: int) -> list:
    document: list = []
    for _ in range(depth):
        document = [document]
    return document


@pytest.mark.parametrize(("schema_file", "definition"), TARGETS, ids=lambda t: str(t))
def test_every_shipped_schema_has_the_quick_check(schema_file, definition):
    assert schemas._quick_check(schema_file, definition) is not None


@pytest.mark.parametrize(("schema_file", "definition"), TARGETS, ids=lambda t: str(t))
def test_the_quick_check_never_passes_what_jsonschema_refuses(schema_file, definition):
    """The quick check passing a document jsonschema refuses would let it through unchecked: never, on every shipped
    schema, for documents that are valid, invalid, or odd in the ways senders are (non-finite numbers, huge
    integers, booleans for numbers, lone surrogates, Python's `$` before a newline, other digits and spaces, dates
    that are not, a deep document)."""
    referencing = _referencing(schema_file, definition)
    for document in [*_documents(), *_hostile_documents()]:
        if schemas._passes_quickly(document, schema_file, definition):
            assert referencing.is_valid(document), (schema_file, definition, document)
        assert (schemas.first_error(document, schema_file, definition) is None) == referencing.is_valid(document)


def test_the_quick_check_passes_what_the_wire_carries():
    """The documents every job sends pass the quick check: the fast path is the path taken."""
    graph = {**alternating_graph(6)["graph"], "workflowId": JOB_ID}
    carried = [
        (graph, "graph.schema.json", None),
        (
            {"jobId": JOB_ID, "status": "running", "source": "control-plane", "created": "1795656075000"},
            "pubsub.schema.json",
            "status",
        ),
        (
            {"jobId": JOB_ID, "progress": 0.25, "created": "1795656075000", "eventId": "r/progress/0.25"},
            "pubsub.schema.json",
            "progress",
        ),
        (
            {"jobId": JOB_ID, "data": '{"nodeId": "n"}', "created": "2026-11-25T10:00:00.123Z"},
            "pubsub.schema.json",
            "data",
        ),
    ]
    for document, schema_file, definition in carried:
        assert schemas._passes_quickly(document, schema_file, definition), (schema_file, definition)


def test_a_tuple_is_an_array_to_both_checks():
    """A graph built in Python may hold tuples (json.dumps writes them as arrays): both checks agree it is valid."""
    graph = {**alternating_graph(6)["graph"], "workflowId": JOB_ID}
    built = {**graph, "nodes": tuple(graph["nodes"]), "edges": tuple(graph["edges"])}
    assert schemas._passes_quickly(built, "graph.schema.json", None)
    assert schemas.validator("graph.schema.json").is_valid(built)


def test_the_quick_check_goes_no_deeper_than_its_schema():
    """A document nested 100,000 deep (far past what the wire lets through) is judged at the schema's depth."""
    assert schemas._passes_quickly({"jobId": JOB_ID, "data": _nested(100_000)}, "pubsub.schema.json", "data")


@contextlib.contextmanager
def only_schema(monkeypatch, name: str, schema: dict) -> Iterator[None]:
    """The schema registry holding `schema` alone (as `name`), the caches built from the shipped one emptied."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name, **schema}
    registry = Registry().with_resources([(name, Resource.from_contents(schema))])
    monkeypatch.setattr(schemas, "_registry", lambda: registry)
    caches = (schemas._schema, schemas.validator, schemas._quick_check)
    for cached in caches:
        cached.cache_clear()
    try:
        yield
    finally:
        for cached in caches:
            cached.cache_clear()


@pytest.mark.parametrize(
    ("schema", "document", "expected"),
    [
        # draft 7 ignores prefixItems, and would pass [1]
        ({"type": "array", "prefixItems": [{"type": "string"}]}, [1], "0: 1 is not of type 'string'"),
        (
            {"type": "array", "items": {"unevaluatedProperties": False}, "minItems": 1},
            [{"x": 1}],
            "0: Unevaluated properties are not allowed ('x' was unexpected)",
        ),
    ],
    ids=["prefixItems", "unevaluatedProperties"],
)
def test_a_schema_the_quick_check_cannot_be_trusted_with_is_left_to_jsonschema(monkeypatch, schema, document, expected):
    with only_schema(monkeypatch, "odd.schema.json", schema):
        assert schemas._quick_check("odd.schema.json") is None
        assert schemas.first_error(document, "odd.schema.json") == expected


def test_a_recursive_schema_keeps_its_references(monkeypatch):
    """Left as written, and to jsonschema alone, which resolves its references through the registry."""
    tree = {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    }
    with only_schema(monkeypatch, "tree.schema.json", tree):
        checker = schemas.validator("tree.schema.json")
        assert checker.schema == schemas._registry().contents("tree.schema.json"), (
            "left as written: inlining a cycle would never end"
        )
        assert schemas._quick_check("tree.schema.json") is None
        assert schemas.first_error({"children": [{"children": [{"value": "x"}]}]}, "tree.schema.json") == (
            "children/0/children/0/value: 'x' is not of type 'integer'"
        )
