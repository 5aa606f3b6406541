"""JSON Schemas: loaded once, references inlined, documents judged (a compiled check first, jsonschema words)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from config import SCHEMA_DIR

# One judge of formats for both checks, so that a date passes both or neither (jsonschema-rs, tried first, had its
# own and passed a leap second rfc3339-validator refuses). Only strings with a `format` reach it.
FORMATS = FormatChecker()


@cache
def _registry() -> Registry:
    resources = []
    for path in SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(schema)))
    return Registry().with_resources(resources)


class _NotInlinable(Exception):
    pass


def _inlined(node: Any, base: str, trail: tuple[str, ...] = ()) -> Any:
    """`node` with each `$ref` replaced by what it names, resolved against `base` (the file it sits in).

    jsonschema resolves a `$ref` through the registry on every validation: a pub/sub message took ~250 µs to
    validate, ~50 µs inlined, and every relay validates every message. A recursive schema, or a `$ref` beside other
    keywords (whose base would change once moved), raises _NotInlinable: that schema keeps its references.
    """
    if isinstance(node, list):
        return [_inlined(item, base, trail) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is None:
        return {key: value if key == "$defs" else _inlined(value, base, trail) for key, value in node.items()}
    if len(node) > 1 or not isinstance(ref, str) or "$dynamicRef" in node:
        raise _NotInlinable(ref)
    target = base + ref if ref.startswith("#") else ref
    if target in trail:
        raise _NotInlinable(target)
    resolved = _registry().resolver(base).lookup(target).contents
    return _inlined(resolved, target.split("#")[0] or base, (*trail, target))


@cache
def _schema(schema_file: str, definition: str | None) -> tuple[Any, bool]:
    """A schema file, or one of its `$defs`, with its references inlined where they can be; True when they were."""
    schema = {"$ref": f"{schema_file}#/$defs/{definition}"} if definition else _registry().contents(schema_file)
    try:
        return _inlined(schema, schema_file), True
    except _NotInlinable:
        return schema, False


@cache
def validator(schema_file: str, definition: str | None = None) -> Draft202012Validator:
    """A validator for a schema file, or for one of its `$defs` (references inlined where they can be)."""
    schema, _ = _schema(schema_file, definition)
    return Draft202012Validator(schema, registry=_registry(), format_checker=FORMATS)


@cache
def _quick_check(schema_file: str, definition: str | None = None) -> Callable[[Any], object] | None:
    """fastjsonschema's check for an inlined schema (it raises on an invalid document), or None: a schema whose
    references stay (a recursive one) is left to jsonschema, which resolves them through the registry.

    Valid documents are the common case, and fastjsonschema (the schema compiled to Python) passes one ~20 × sooner:
    a pub/sub message in ~3 µs against ~60, a graph in ~25 against ~350. What it refuses, jsonschema judges again and
    words. An inlined schema has no references left, so the check goes no deeper than the schema itself, whatever
    the document's depth. tests/test_schema_validators.py holds it to never passing what jsonschema refuses.
    """
    schema, inlined = _schema(schema_file, definition)
    if not inlined:
        return None
    # Compiled as draft 7, which has every keyword these schemas use; nothing refers to the `$defs` any more.
    body = {key: value for key, value in schema.items() if key not in ("$schema", "$id", "$defs")}
    formats = {name: partial(FORMATS.conforms, format=name) for name in FORMATS.checkers}
    return fastjsonschema.compile(body, formats=formats, use_default=False)


def _passes_quickly(doc: Any, schema_file: str, definition: str | None) -> bool:
    quick = _quick_check(schema_file, definition)
    if quick is None:
        return False
    try:
        quick(doc)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def first_error(doc: Any, schema_file: str, definition: str | None = None) -> str | None:
    """The clearest schema violation in `doc` as 'path: message', or None when it is valid."""
    if _passes_quickly(doc, schema_file, definition):
        return None
    checker = validator(schema_file, definition)
    if checker.is_valid(doc):  # what only jsonschema passes, e.g. "1\n" against "^[0-9]+$" (Python's `$`)
        return None
    err = min(checker.iter_errors(doc), key=lambda e: (len(e.path), list(map(str, e.path))))
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    return f"{where}: {err.message}"
