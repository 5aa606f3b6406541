"""Data only: manifests, pipelines, bridge names and the JSON Schemas of every contract."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = CONFIG_DIR / "schemas"
