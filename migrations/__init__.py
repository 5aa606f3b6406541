"""Numbered SQL migrations, applied in order by `spinbot migrate`."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
