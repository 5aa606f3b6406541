"""Config loading: the shipped files load, and a broken file is named together with the broken field."""

from __future__ import annotations

import json
import shutil

import pytest

from config import CONFIG_DIR
from core.contracts import ConfigError, load_contracts


@pytest.fixture
def config_dir(tmp_path):
    """A private copy of config/ that a test may break."""
    return shutil.copytree(CONFIG_DIR, tmp_path / "config")


def edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def load_error(config_dir) -> str:
    with pytest.raises(ConfigError) as caught:
        load_contracts(config_dir)
    return str(caught.value)


def test_shipped_config_loads():
    contracts = load_contracts()
    assert set(contracts.pipelines) >= {"f5tts_infinitetalk", "sadtalker", "svd_wav2lip"}
    assert set(contracts.services("node")) == {
        "llm.generate_script",
        "info.get_capabilities",
        "artifacts.upload_artifact",
    }
    assert {"info.get_capabilities", "dummy.dummy_task", "generate.f5_to_tts"} <= set(contracts.services("python"))


def test_shipped_bridge_names_match_the_protocol():
    bridge = load_contracts().bridge
    assert (bridge.data_stream, bridge.control_stream, bridge.workers_group) == (
        "process:data",
        "process:control",
        "workers",
    )
    assert bridge.dead_letter(bridge.data_stream) == "process:data:dead"
    assert bridge.channel_patterns == ["channel:status:*", "channel:progress:*", "channel:data:*"]
    assert (bridge.job_key("j"), bridge.status_key("j"), bridge.progress_key("j")) == (
        "job:j",
        "job:j:status",
        "job:j:progress",
    )
    assert bridge.channel("progress", "j") == "channel:progress:j"
    assert bridge.ttl == 43200


def test_copied_config_loads(config_dir):
    assert load_contracts(config_dir) == load_contracts()


def test_missing_relay_section_takes_defaults(config_dir):
    edit(config_dir / "redis.bridge.json", lambda doc: doc.pop("relay"))
    bridge = load_contracts(config_dir).bridge
    assert (bridge.block_ms, bridge.batch_size, bridge.claim_idle_ms) == (5000, 64, 30_000)


@pytest.mark.parametrize(
    "name", ["capabilities.json", "python-capabilities.json", "pipelines.json", "redis.bridge.json"]
)
def test_bad_json_names_the_file(name, config_dir):
    (config_dir / name).write_text('{"capabilities": [')
    message = load_error(config_dir)
    assert message.startswith(f"{config_dir / name}: not valid JSON")


def test_missing_file_is_named(config_dir):
    (config_dir / "pipelines.json").unlink()
    assert load_error(config_dir) == f"{config_dir / 'pipelines.json'}: file not found"


@pytest.mark.parametrize(
    ("name", "change", "field_path", "complaint"),
    [
        (
            "capabilities.json",
            lambda d: d["capabilities"][1].pop("label"),
            "capabilities/1",
            "'label' is a required property",
        ),
        ("python-capabilities.json", lambda d: d.pop("generatedAt"), "(root)", "'generatedAt' is a required property"),
        (
            "pipelines.json",
            lambda d: d["pipelines"]["sadtalker"].pop("edges"),
            "pipelines/sadtalker",
            "'edges' is a required property",
        ),
        ("redis.bridge.json", lambda d: d["jobs"].pop("ttl"), "jobs", "'ttl' is a required property"),
    ],
)
def test_missing_required_field_is_named(name, change, field_path, complaint, config_dir):
    edit(config_dir / name, change)
    assert load_error(config_dir) == f"{config_dir / name}: {field_path}: {complaint}"


@pytest.mark.parametrize(
    ("name", "change", "field_path"),
    [
        (
            "capabilities.json",
            lambda d: d["capabilities"][0]["runtime"].update(concurrency="four"),
            "capabilities/0/runtime/concurrency",
        ),
        (
            "python-capabilities.json",
            lambda d: d["capabilities"][2]["runtime"].update(timeoutSeconds=0),
            "capabilities/2/runtime/timeoutSeconds",
        ),
        ("capabilities.json", lambda d: d["capabilities"][0].update(id="No Dots"), "capabilities/0/id"),
        (
            "pipelines.json",
            lambda d: d["pipelines"]["svd_wav2lip"]["nodes"][2].update(progressWeight="half"),
            "pipelines/svd_wav2lip/nodes/2/progressWeight",
        ),
        (
            "pipelines.json",
            lambda d: d["pipelines"]["sadtalker"]["nodes"][0].update(plane="gpu"),
            "pipelines/sadtalker/nodes/0/plane",
        ),
        ("redis.bridge.json", lambda d: d["jobs"].update(ttl="12h"), "jobs/ttl"),
        ("redis.bridge.json", lambda d: d["streams"].update(maxLength=10), "streams/maxLength"),
    ],
)
def test_wrong_type_or_value_is_named(name, change, field_path, config_dir):
    edit(config_dir / name, change)
    assert load_error(config_dir).startswith(f"{config_dir / name}: {field_path}: ")


@pytest.mark.parametrize(
    ("name", "index", "wrong_plane", "right_plane"),
    [("capabilities.json", 2, "python", "node"), ("python-capabilities.json", 1, "node", "python")],
)
def test_capability_in_the_wrong_manifest_is_named(name, index, wrong_plane, right_plane, config_dir):
    edit(config_dir / name, lambda d: d["capabilities"][index].update(plane=wrong_plane))
    assert load_error(config_dir) == f"{config_dir / name}: capabilities/{index}/plane: must be {right_plane!r}"


@pytest.mark.parametrize("channel", ["status", "progress", "data"])
def test_bridge_channel_without_trailing_colon_is_named(channel, config_dir):
    edit(config_dir / "redis.bridge.json", lambda d: d["channels"].update({channel: f"channel:{channel}"}))
    message = load_error(config_dir)
    assert message == f"{config_dir / 'redis.bridge.json'}: channels/{channel}: 'channel:{channel}' does not match ':$'"


def test_broken_pipeline_template_is_a_config_error_naming_the_variant(tmp_path):
    import json

    from core.planner import check_templates

    config_dir = shutil.copytree(CONFIG_DIR, tmp_path / "config")
    doc = json.loads((config_dir / "pipelines.json").read_text())
    doc["pipelines"]["sadtalker"]["edges"].append({"from": "script", "to": "nowhere"})
    (config_dir / "pipelines.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"pipelines/sadtalker: .*nowhere"):
        check_templates(load_contracts(config_dir), {})


def test_undecodable_config_is_a_config_error(tmp_path):
    config_dir = shutil.copytree(CONFIG_DIR, tmp_path / "config")
    (config_dir / "pipelines.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match=r"pipelines\.json"):
        load_contracts(config_dir)


def test_no_limit_timeout_is_for_the_data_plane_only(config_dir):
    edit(config_dir / "python-capabilities.json", lambda d: d["capabilities"][1]["runtime"].update(timeoutSeconds=-1))
    assert load_contracts(config_dir).services("python")["dummy.dummy_task"]["runtime"]["timeoutSeconds"] == -1
    edit(config_dir / "capabilities.json", lambda d: d["capabilities"][0]["runtime"].update(timeoutSeconds=-1.0))
    assert load_error(config_dir).startswith(
        f"{config_dir / 'capabilities.json'}: capabilities/0/runtime/timeoutSeconds: the node plane needs a limit"
    )
