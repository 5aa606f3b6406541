"""Writes docs/settings.md from core/settings.py: every Settings field, its variable(s), type, default and meaning.

Run `python -m spinbot.settings_doc` after changing a setting. A field's meaning is its `Field(description=)`, else
the comment right above it in core/settings.py, else the entry in DESCRIPTIONS below.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from core import settings as settings_module
from core.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

DESCRIPTIONS = {
    "environment": "`production` refuses unsafe settings at start-up: API keys required, no default MinIO secret.",
    "log_format": "`json`: one JSON object a line; `text`: for people; `auto`: text on a terminal, JSON otherwise.",
    "temporal_namespace": "The Temporal namespace (see SPINBOT_TEMPORAL_ADDRESS for how unset values are found).",
    "redis_url": "Redis: streams, pub/sub and the job:<id> keys shared with the data plane.",
    "database_url": "PostgreSQL (jobs, job_events, migrations).",
    "api_host": "Address `spinbot api` listens on.",
    "api_port": "Port `spinbot api` listens on.",
    "api_keys": "Comma-separated API keys. Empty: no key asked (development only). REST: `Authorization: Bearer "
    '<key>`; WebSocket: `?key=` or a first message `{"action":"auth","key":...}`.',
    "cors_origins": "Comma-separated browser origins allowed by CORS (the frontend's exact origins).",
    "max_body_bytes": "Largest request body accepted by JSON routes (413 beyond).",
    "api_keep_alive_seconds": "Idle keep-alive connections are closed after this many seconds.",
    "api_max_connections": "Past this many connections plus requests in progress, new requests get 503.",
    "api_max_header_bytes": "Largest request head accepted.",
    "upload_max_bytes": "Largest file of each part of POST /api/infinitetalk.",
    "llm_endpoint": "Ollama's base URL, the default endpoint of every script node.",
    "llm_model": "Default model of script nodes.",
    "llm_temperature": "Default sampling temperature of script nodes.",
    "llm_timeout_ms": "Default time limit of one LLM call, in milliseconds.",
    "capabilities_timeout_seconds": "How long GET /api/capabilities waits for the data-plane worker (504 beyond).",
    "capabilities_cache_seconds": "How long a good GET /api/capabilities answer is reused.",
    "minio_endpoint": "MinIO / S3 endpoint (`host:port` or `http(s)://host:port`). Unset: a local folder "
    "(SPINBOT_ARTIFACTS_DIR) stands in for object storage.",
    "minio_access_key": "MinIO / S3 access key.",
    "minio_secret_key": "MinIO / S3 secret key (must not be the default in production).",
    "minio_secure": "Use TLS to reach a `host:port` MinIO endpoint.",
    "artifacts_dir": "The local folder store's root, when no MinIO endpoint is set.",
    "worker_metrics_port": "Port of the Temporal SDK's Prometheus metrics of `spinbot worker` (unset: none).",
}


def comments_above(source: str) -> dict[str, str]:
    """field name → the comment lines right above its declaration in the class body."""
    found, block = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^    ([a-z_][a-z0-9_]*)\s*:", line)
        if match and block:
            found[match.group(1)] = " ".join(block)
        block = []
    return found


def variables(name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"SPINBOT_{name.upper()}"]


def type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        kinds = [type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " or ".join(kinds) + " (optional)"
    if origin is list:
        return "comma-separated list"
    return {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}.get(
        annotation, str(annotation)
    )


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value) or "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def setting_rows() -> list[tuple[str, str, str, str]]:
    """(variables, type, default, meaning) of every Settings field, in declaration order."""
    comments = comments_above(inspect.getsource(settings_module))
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = field.description or comments.get(name) or DESCRIPTIONS.get(name, "")
        names = " or ".join(f"`{variable}`" for variable in variables(name, field))
        rows.append((names, type_name(field.annotation), default_text(field), meaning.replace("|", "\\|")))
    return rows


def render() -> str:
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable, read and validated once at start-up by `core/settings.py`",
        "(a bad value stops the process with one line naming it). This page is generated from that file:",
        "`.venv/bin/python -m spinbot.settings_doc` rewrites it; `tests/test_docs.py` fails when a setting is",
        "missing here.",
        "",
        "| variable | type | default | what it does |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in setting_rows()]
    lines += [
        "",
        "## Outside `core/settings.py`",
        "",
        "| variable | read by | what it does |",
        "|---|---|---|",
        "| `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE` | "
        "every role | The Temporal SDK's own environment configuration, used when SPINBOT_TEMPORAL_ADDRESS / "
        "SPINBOT_TEMPORAL_NAMESPACE are unset. |",
        "| `SPINBOT_API_URL` | the CLI's job commands | The API's base URL (default `http://127.0.0.1:3000`); "
        "`--api` wins. |",
        "| `SPINBOT_API_KEY` | the CLI's job commands | Sent as `Authorization: Bearer` and as `?key=` on `/ws`; "
        "`--api-key` wins. |",
        "| `SPINBOT_RECORD_HISTORIES` | tests | `1`: replay tests record new histories into `tests/histories/`. |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if DOC.exists() and DOC.read_text() == text else 1)
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
