"""Temporal's JSON payloads, written and read as its default converter does, at a fraction of the cost.

Every workflow input, local-activity snapshot, activity task and handback is one of our dataclasses. The default
converter writes each with `dataclasses.asdict`, which deep-copies the whole graph in Python before encoding it,
and reads each by resolving the class's type hints again on every call (our annotations are strings, so each is
evaluated anew). Measured here on a sadtalker snapshot (1.3 KB): 365 µs to write and 232 µs to read, where the
same graph as a plain dict takes ~50 and ~40; with this module, 51 and 69. Three snapshots per job each way, and
the other inputs, across the API, the workers and the relays.

Here a dataclass is handed to the JSON encoder field by field (it meets nested dataclasses the same way), and a
class's field types are resolved once. The bytes written and the objects read are the default converter's (the
tests compare both), so every history and every client with the default converter keeps working with ours.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, get_type_hints

from temporalio.converter import (
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
)
from temporalio.converter import value_to_type as _value_to_type


# Bounded: a workflow sandbox that re-imports our modules (not ours: spinbot/worker.py passes them through) would
# make new classes on every run.
@lru_cache(maxsize=256)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


@lru_cache(maxsize=256)
def _field_types(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, resolved type, passed to __init__) of each field, resolved once per class."""
    hints = get_type_hints(cls)
    return tuple((field.name, hints[field.name], field.init) for field in dataclasses.fields(cls))


class _FieldByFieldEncoder(AdvancedJSONEncoder):
    def default(self, o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {name: getattr(o, name) for name in _field_names(type(o))}
        return super().default(o)


class _ResolvedOnce(JSONTypeConverter):
    """Reads a dataclass as `value_to_type` does (the same checks and errors), its field types resolved once."""

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return JSONTypeConverter.Unhandled
        if not isinstance(value, dict):
            raise TypeError(f"Cannot convert to dataclass {hint}, value is {type(value)} not dict")
        init: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for name, field_type, in_init in _field_types(hint):
            if name in value:
                try:
                    converted = _value_to_type(field_type, value[name], CONVERTERS)
                except Exception as err:
                    raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
                (init if in_init else later)[name] = converted
        obj = hint(**init)
        for name, converted in later.items():
            object.__setattr__(obj, name, converted)
        return obj


CONVERTERS: list[JSONTypeConverter] = [_ResolvedOnce()]


class PayloadConverter(CompositePayloadConverter):
    """The default converters, with JSON written field by field and read with field types resolved once."""

    def __init__(self) -> None:
        lighter = JSONPlainPayloadConverter(encoder=_FieldByFieldEncoder, custom_type_converters=CONVERTERS)
        default = DefaultPayloadConverter.default_encoding_payload_converters
        super().__init__(*(lighter if isinstance(c, JSONPlainPayloadConverter) else c for c in default))


DATA_CONVERTER = dataclasses.replace(DataConverter.default, payload_converter_class=PayloadConverter)
