"""SPINBOT_CONFIG_DIR: pipelines and capabilities changed without rebuilding, validated like the shipped files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from config import CONFIG_DIR
from core.contracts import ConfigError, load_contracts
from core.planner import check_templates


def _own_config(tmp_path, change_pipelines=None, change_capabilities=None):
    """A config folder holding only the two files a deployment must bring; the rest comes from the package."""
    folder = tmp_path / "spinbot-config"
    folder.mkdir()
    for name, change in (("pipelines.json", change_pipelines), ("capabilities.json", change_capabilities)):
        doc = json.loads((CONFIG_DIR / name).read_text())
        if change:
            change(doc)
        (folder / name).write_text(json.dumps(doc))
    return folder


def _add_quick_pipeline(doc):
    doc["pipelines"]["quick"] = {
        "nodes": [
            {"id": "script", "service": "llm.generate_script", "plane": "node", "progressWeight": 0.5},
            {"id": "voice", "service": "dummy.dummy_task", "plane": "python", "progressWeight": 0.5},
        ],
        "edges": [{"from": "script", "to": "voice"}],
    }


def _spinbot(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spinbot", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def test_own_files_are_read_and_the_others_are_the_shipped_ones(tmp_path):
    folder = _own_config(
        tmp_path,
        _add_quick_pipeline,
        lambda d: d["capabilities"][0]["runtime"].update(concurrency=2),
    )
    spec = load_contracts(folder)
    shipped = load_contracts()
    assert set(spec.pipelines) == {*shipped.pipelines, "quick"}
    assert spec.services("node")["llm.generate_script"]["runtime"]["concurrency"] == 2
    assert (spec.python_capabilities, spec.bridge) == (shipped.python_capabilities, shipped.bridge)
    assert (spec.path("pipelines.json"), spec.path("redis.bridge.json")) == (
        folder / "pipelines.json",
        CONFIG_DIR / "redis.bridge.json",
    )
    check_templates(spec, {})


def test_a_file_present_in_the_folder_wins_over_the_shipped_one(tmp_path):
    folder = _own_config(tmp_path)
    bridge = json.loads((CONFIG_DIR / "redis.bridge.json").read_text())
    bridge["jobs"]["ttl"] = 600
    (folder / "redis.bridge.json").write_text(json.dumps(bridge))
    assert load_contracts(folder).bridge.ttl == 600


@pytest.mark.parametrize("name", ["pipelines.json", "capabilities.json"])
def test_the_folder_must_bring_pipelines_and_capabilities(tmp_path, name):
    folder = _own_config(tmp_path)
    (folder / name).unlink()
    with pytest.raises(ConfigError) as caught:
        load_contracts(folder)
    assert str(caught.value) == f"{folder / name}: file not found"


def test_a_folder_that_is_not_there_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        load_contracts(tmp_path / "nowhere")


def test_a_template_naming_an_unknown_service_names_the_deployments_file(tmp_path):
    def broken(doc):
        _add_quick_pipeline(doc)
        doc["pipelines"]["quick"]["nodes"][1]["service"] = "generate.nothing"

    folder = _own_config(tmp_path, broken)
    with pytest.raises(ConfigError) as caught:
        check_templates(load_contracts(folder), {})
    assert str(caught.value).startswith(f"{folder / 'pipelines.json'}: pipelines/quick: ")
    assert "generate.nothing" in str(caught.value)


@pytest.mark.parametrize(
    "change_pipelines, change_capabilities, named, role",
    [
        (
            lambda d: d["pipelines"]["sadtalker"]["nodes"][0].update(plane="gpu"),
            None,
            "pipelines.json: pipelines/sadtalker/nodes/0/plane: ",
            "api",
        ),
        (
            None,
            lambda d: d["capabilities"][0]["runtime"].update(concurrency=0),
            "capabilities.json: capabilities/0/",
            "worker",
        ),
        (
            lambda d: (_add_quick_pipeline(d), d["pipelines"]["quick"]["edges"].append({"from": "voice", "to": "x"})),
            None,
            "pipelines.json: pipelines/quick: ",
            "relay",
        ),
        (None, lambda d: d["capabilities"][1].pop("handler"), "capabilities.json: capabilities/1: ", "dataplane"),
    ],
    ids=["schema-api", "capabilities-worker", "template-relay", "capabilities-dataplane"],
)
def test_a_broken_file_stops_the_role_with_one_line(tmp_path, change_pipelines, change_capabilities, named, role):
    folder = _own_config(tmp_path, change_pipelines, change_capabilities)
    result = _spinbot(role, SPINBOT_CONFIG_DIR=str(folder))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"config error: {folder}/{named}"), result.stderr
