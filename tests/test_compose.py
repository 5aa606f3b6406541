"""docker-compose.yml is valid Compose and runs every role; checked offline by the Compose binary."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(sys.executable).parent / "docker-compose"


def _compose(*args, **env):
    return subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_compose_file_validates_with_every_role():
    result = _compose("--profile", "simulator", "config", "--services", SPINBOT_API_KEYS="k", MINIO_ROOT_PASSWORD="p")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        "api",
        "workflow-worker",
        "activity-worker",
        "relay",
        "dataplane-simulator",
        "temporal",
        "temporal-ui",
        "redis",
        "postgres",
        "minio",
    } <= services


def test_compose_refuses_to_start_without_secrets():
    result = _compose("config", "-q", SPINBOT_API_KEYS="", MINIO_ROOT_PASSWORD="")
    # This Compose build reports interpolation errors on stderr but may still exit 0.
    assert "required variable" in result.stderr
    assert "SPINBOT_API_KEYS" in result.stderr or "MINIO_ROOT_PASSWORD" in result.stderr
