"""Node params checked at submission against the capability's declared `parameters` (PROTOCOL §7).

A declaration is `{name, type, description?, required?, default?}`, as the data-plane worker's manifest
has it; our own manifest may add JSON Schema keywords (`minimum`, `minLength`, `pattern`, `enum`, ...)
for what a type alone cannot say. Undeclared params pass through untouched; null means absent.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from core.graph_shape import PlanningError, node_label, show

# The worker's models may name Python types; JSON Schema's names are ours.
TYPE_NAMES = {
    "string": "string",
    "str": "string",
    "number": "number",
    "float": "number",
    "integer": "integer",
    "int": "integer",
    "boolean": "boolean",
    "bool": "boolean",
    "object": "object",
    "dict": "object",
    "array": "array",
    "list": "array",
}
NOT_BLANK = "\\S"  # the pattern a manifest gives a string that must have some non-space text
KEYWORDS = (
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "minItems",
    "maxItems",
)


def check_node_params(node: dict, capability: dict, require: bool = True) -> None:
    """Raise PlanningError naming the node and field when `node.params` breaks the declared parameters.

    With `require=False` (pipeline templates, which callers complete) missing required params are allowed.
    """
    params = node.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return  # the graph schema names this node
    for declared in capability.get("parameters") or ():
        name = declared["name"]
        value = params.get(name)
        where = f"{node_label(node['id'])}: params.{name}"
        if value is None:
            if require and declared.get("required") and declared.get("default") is None:
                raise PlanningError(f"{where}: required by {capability['id']}, missing")
            continue
        problem = next(iter(_validator(json.dumps(declared, sort_keys=True)).iter_errors(value)), None)
        if problem is not None and problem.path:  # inside the value: jsonschema's words, cut short
            inner = "/".join(str(part) for part in problem.path)
            raise PlanningError(f"{where}/{inner}: {problem.message[:200]}")
        if problem is not None:
            raise PlanningError(f"{where}: {_explain(problem.validator, declared, value)}")


@cache
def _validator(declaration: str) -> Draft202012Validator:
    """A validator for one declared parameter (keyed by its JSON text, so each is built once)."""
    declared = json.loads(declaration)
    schema: dict[str, Any] = {key: declared[key] for key in KEYWORDS if key in declared}
    types = [TYPE_NAMES.get(part.strip().lower()) for part in str(declared.get("type", "")).split("|")]
    if types and all(types):  # a type we cannot read ("any", "Path") is not checked
        schema["type"] = types
    return Draft202012Validator(schema)


def _explain(keyword: Any, declared: dict, value: Any) -> str:
    wanted = {
        "type": f"must be of type {declared.get('type')}",
        "enum": f"must be one of {show(declared.get('enum'))}",
        "minimum": f"must be >= {declared.get('minimum')}",
        "maximum": f"must be <= {declared.get('maximum')}",
        "exclusiveMinimum": f"must be > {declared.get('exclusiveMinimum')}",
        "exclusiveMaximum": f"must be < {declared.get('exclusiveMaximum')}",
        "minLength": f"must have at least {declared.get('minLength')} characters",
        "maxLength": f"must have at most {declared.get('maxLength')} characters",
        "minItems": f"must have at least {declared.get('minItems')} items",
        "maxItems": f"must have at most {declared.get('maxItems')} items",
        "pattern": "must not be blank"
        if declared.get("pattern") == NOT_BLANK
        else f"must match {show(declared.get('pattern'))}",
    }.get(str(keyword), "is not valid")
    return f"{wanted}, got {show(value)}"
