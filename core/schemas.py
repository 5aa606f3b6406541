"""JSON Schemas: loaded once, references inlined, documents judged (a compiled check first, jsonschema words)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.protocols import Validator
from referencing import Registry, Resource

from config import SCHEMA_DIR

# One judge of formats for both checks, so that a date passes both or neither (jsonschema-rs, tried first, had its
# own and passed a leap second rfc3339-validator refuses). Only strings with a `format` reach it.
FORMATS = FormatChecker()
QUICK_FORMATS = {name: partial(FORMATS.conforms, format=name) for name in FORMATS.checkers}
# A tuple is an array: json.dumps writes it as one, and fastjsonschema counts it as one.
JsonValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("array", lambda _, value: isinstance(value, (list, tuple))),
)
# What the quick check may be trusted with: keywords its draft 7 judges as Draft 2020-12 does (the differential
# test holds it to that), and annotations. Newer ones (prefixItems, unevaluatedProperties...) it would ignore.
QUICK_KEYWORDS = frozenset(
    {
        *("type", "enum", "const", "properties", "required", "additionalProperties", "minProperties", "items"),
        *("minItems", "maxItems", "anyOf", "allOf", "oneOf", "not", "pattern", "format", "minLength", "maxLength"),
        *("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
        *("title", "description", "$comment", "examples"),
    }
)
SUBSCHEMAS = ("items", "additionalProperties", "not")
SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


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
def validator(schema_file: str, definition: str | None = None) -> Validator:
    """A validator for a schema file, or for one of its `$defs` (references inlined where they can be)."""
    schema, _ = _schema(schema_file, definition)
    return JsonValidator(schema, registry=_registry(), format_checker=FORMATS)


@cache
def _quick_check(schema_file: str, definition: str | None = None) -> Callable[[Any], object] | None:
    """The schema compiled by fastjsonschema (~20 × sooner on a valid document; it raises on an invalid one), or None
    where it cannot be trusted: references left (a recursive schema), a keyword outside QUICK_KEYWORDS."""
    schema, inlined = _schema(schema_file, definition)
    body = {key: value for key, value in schema.items() if key not in ("$schema", "$id", "$defs")}
    if not inlined or not _quick_keywords_only(body):
        return None
    try:
        return fastjsonschema.compile(body, formats=QUICK_FORMATS, use_default=False)
    except fastjsonschema.JsonSchemaDefinitionException:  # one it cannot compile: jsonschema words the problem
        return None


def _quick_keywords_only(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return isinstance(schema, bool)
    subschemas = [
        *(schema.get("properties") or {}).values(),
        *(schema[key] for key in SUBSCHEMAS if key in schema),
        *(item for key in SUBSCHEMA_LISTS for item in schema.get(key) or ()),
    ]
    return set(schema) <= QUICK_KEYWORDS and all(map(_quick_keywords_only, subschemas))


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
