"""Bytes other programs wrote, made safe before use: UTF-8 checked, size and depth bounded, text PostgreSQL can hold.

Everything that fails here is a contract error about one entry or message; the caller sets it aside
(dead letter) and goes on with the next.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.contracts import ContractError
from core.settings import Settings

# Deeper JSON is refused: the workflow copies and serialises graphs recursively, and Python's recursion limit
# (about 1,000 frames, several per level) must never be what stops a job. Real graphs nest under 20 levels.
MAX_DEPTH = 64
DEAD_LETTER_VALUE_MAX = 256 << 10  # of each field's bytes kept in a dead letter; the rest is cut (and said so)


@dataclass(frozen=True)
class WireLimits:
    """What one stream entry or pub/sub message may be, and how often a failing entry is tried (settings)."""

    max_bytes: int = 4 << 20
    max_deliveries: int = 5
    signal_bytes: int = 2 << 20  # Temporal refuses a signal whose payload is larger (its blob size limit)
    dead_letters: int = 1000  # entries kept in each dead-letter stream (the newest)

    @classmethod
    def of(cls, settings: Settings) -> WireLimits:
        return cls(
            settings.max_entry_bytes,
            settings.max_deliveries,
            settings.temporal_payload_limit_bytes,
            settings.dead_letter_max_entries,
        )


def text_of(data: bytes | str, what: str) -> str:
    """`data` as text; ContractError naming `what` and the first bad byte when it is not UTF-8."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"{what}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def decode_fields(fields: Mapping[bytes, bytes], max_bytes: int) -> dict[str, str]:
    """A stream entry's fields as text, or ContractError when it is too large or not UTF-8."""
    size = sum(len(key) + len(value) for key, value in fields.items())
    if size > max_bytes:
        raise ContractError(f"entry of {size} bytes is over the limit of {max_bytes}")
    decoded = {}
    for key, value in fields.items():
        name = text_of(key, "a field name")
        decoded[name] = text_of(value, name)
    return decoded


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"{name} is not a JSON number")


def load_json(text: str, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most `max_depth` deep, whose text PostgreSQL can store."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{what}: not valid JSON ({exc.msg})") from None
    except ContractError as exc:
        raise ContractError(f"{what}: not valid JSON ({exc})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ContractError(f"{what}: not valid JSON ({str(exc)[:80]})") from None
    except RecursionError:
        raise ContractError(f"{what}: nested too deeply") from None
    check_portable(value, what, max_depth)
    return value


def check_portable(value: Any, what: str, max_depth: int = MAX_DEPTH) -> None:
    """ContractError for JSON nested deeper than `max_depth`, a non-finite number, or a string holding NUL or a
    lone UTF-16 surrogate (JSON can spell both; PostgreSQL and UTF-8 cannot hold them). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise ContractError(f"{what}: nested deeper than {max_depth} levels")
            for key, child in item.items():
                _check_text(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise ContractError(f"{what}: nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item, what)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ContractError(f"{what}: {item} is not a JSON number")


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise ContractError(f"{what}: a string holds a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractError(f"{what}: a string holds a lone UTF-16 surrogate") from None


def dead_letter_fields(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A copy of what could not be used, safe to store and to read back as text.

    Text stays as it was; a value that is not UTF-8 is stored base64-encoded and named in `base64`; a
    value over DEAD_LETTER_VALUE_MAX bytes is cut there and named in `truncated`.
    """
    copy: dict[str, str] = {}
    encoded, truncated = [], []
    for key, value in fields.items():
        name = key if isinstance(key, str) else key.decode("utf-8", "backslashreplace")
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        if len(raw) > DEAD_LETTER_VALUE_MAX:
            raw = raw[:DEAD_LETTER_VALUE_MAX]
            truncated.append(name)
        try:
            copy[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if name in truncated and exc.reason == "unexpected end of data":
                copy[name] = raw[: exc.start].decode("utf-8")  # the cut split the last character, nothing else
            else:
                copy[name] = base64.b64encode(raw).decode("ascii")
                encoded.append(name)
    if encoded:
        copy["base64"] = ",".join(encoded)
    if truncated:
        copy["truncated"] = ",".join(truncated)
    return copy
