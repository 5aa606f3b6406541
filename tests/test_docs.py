"""The docs in docs/ cannot drift: every setting, REST route and CLI command is documented, and README links them."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from api.app import create_app
from core.settings import Settings
from spinbot.cli import app as cli_app
from spinbot.settings_doc import render, setting_rows, variables

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_every_setting_is_in_docs_settings_md():
    documented = (DOCS / "settings.md").read_text()
    missing = [
        variable
        for name, field in Settings.model_fields.items()
        for variable in variables(name, field)
        if f"`{variable}`" not in documented
    ]
    assert not missing, f"run `.venv/bin/python -m spinbot.settings_doc` to document {missing}"


def test_the_settings_generator_describes_every_setting():
    rows = setting_rows()
    assert len(rows) == len(Settings.model_fields)
    undescribed = [names for names, _, _, meaning in rows if not meaning.strip()]
    assert not undescribed, f"say what they do: a comment above the field in core/settings.py ({undescribed})"
    assert all(f"| {names} |" in render() for names, *_ in rows)


def test_every_rest_route_and_the_websocket_are_in_docs_api_md():
    documented = (DOCS / "api.md").read_text()
    paths = create_app(Settings()).openapi()["paths"]
    missing = [
        f"{method.upper()} {path}"
        for path, operations in paths.items()
        for method in operations
        if f"{method.upper()} {path.replace('{job_id}', '{jobId}')}" not in documented
    ]
    assert not missing, missing
    assert "`/ws`" in documented and '"action": "subscribe"' in documented and '"error": {"nodeId"' in documented


def test_every_cli_command_is_in_docs_cli_md():
    documented = (DOCS / "cli.md").read_text()
    commands = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"`spinbot {name}" not in documented]
    assert not missing, missing


@pytest.mark.parametrize("page", ["api.md", "cli.md", "settings.md"])
def test_readme_links_the_docs(page):
    assert f"(docs/{page})" in (ROOT / "README.md").read_text()
