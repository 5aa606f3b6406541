"""The floors of DESIGN.md hold: imports between our top-level packages run one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"workflows", "core", "activities", "handoff", "api", "spinbot", "config", "migrations", "tests", "bench"}
# Which of our packages each package may import (besides itself).
ALLOWED = {
    "workflows": set(),
    "config": set(),
    "migrations": set(),
    "core": {"workflows", "config", "migrations"},
    "activities": {"core", "workflows"},
    "handoff": {"core", "workflows"},
    "api": {"core", "workflows"},
    "spinbot": OURS - {"tests", "bench"},
    "tests": OURS,
    "bench": OURS,
}
MAX_MODULE_LINES = 300


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that `path` imports, at any depth (function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return found


def import_graph() -> dict[tuple[str, str], int]:
    """(importer, imported) package pairs with the number of modules that make each arrow."""
    arrows: dict[tuple[str, str], int] = {}
    for package in sorted(OURS):
        for path in modules(package):
            for target in imported_packages(path) - {package}:
                arrows[package, target] = arrows.get((package, target), 0) + 1
    return arrows


@pytest.mark.parametrize("package", sorted(OURS))
def test_imports_run_one_way(package):
    wrong = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path in modules(package)
        for target in imported_packages(path) - {package} - ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from api.app import create_app\n    import handoff.relay\n")
    assert imported_packages(module) == {"api", "handoff"}


def test_workflow_floor_is_importable_without_io_libraries():
    """Importing the workflow must not load the clients a workflow may never use."""
    import subprocess
    import sys

    code = "import sys, workflows.job; print(','.join(m for m in ('asyncpg','redis','httpx') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


@pytest.mark.parametrize("package", ["workflows", "core", "activities", "handoff", "api", "spinbot"])
def test_no_module_over_the_size_limit(package):
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "\n".join(long)


if __name__ == "__main__":  # `python -m tests.test_layout` prints the import graph (for notes and reviews)
    for (src, dst), count in sorted(import_graph().items()):
        print(f"{src:10} -> {dst:10} {count}")
