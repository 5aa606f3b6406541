"""spinbot registers its search attributes in Temporal itself, and connects through the SDK's environment config."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.service import RPCStatusCode

from core.search_attributes import SearchAttributesMissing, ensure_search_attributes
from core.temporal import TemporalConfigError, connect, connect_options
from spinbot.ports import free_port
from spinbot.services import start_temporal
from tests.peers import LockedTemporalPeer
from workflows.names import SEARCH_ATTRIBUTES

TEMPORAL_ENV = [name for name in os.environ if name.startswith(("TEMPORAL_", "SPINBOT_TEMPORAL_"))]


@pytest.fixture
def plain_temporal(tmp_path):
    """A dev server started with no spinbot flags: no custom search attributes, as on a fresh cluster."""
    server = start_temporal(tmp_path / "temporal", free_port(), None, search_attributes=False)
    yield server.url
    server.stop()


@pytest.fixture
def clean_env(monkeypatch):
    """No Temporal connection variables from the machine running the tests."""
    for name in TEMPORAL_ENV:
        monkeypatch.delenv(name)
    return monkeypatch


def _spinbot(*args, timeout=60, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in TEMPORAL_ENV}
    return subprocess.run(
        [sys.executable, "-m", "spinbot", *args], capture_output=True, text=True, timeout=timeout, env={**base, **env}
    )


async def _custom_attributes(client) -> dict:
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    return dict(listed.custom_attributes)


async def test_registration_is_idempotent(plain_temporal):
    client = await connect(plain_temporal)
    assert not set(SEARCH_ATTRIBUTES) & set(await _custom_attributes(client))

    assert await ensure_search_attributes(client) == list(SEARCH_ATTRIBUTES)
    assert await ensure_search_attributes(client) == [], "the second call must change nothing"
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert {name: (await _custom_attributes(client))[name] for name in SEARCH_ATTRIBUTES} == dict.fromkeys(
        SEARCH_ATTRIBUTES, keyword
    )


async def test_a_worker_registers_them_reaching_temporal_through_the_sdk_environment(plain_temporal, database_url):
    """Only TEMPORAL_ADDRESS says where Temporal is; the worker registers the attributes before it polls."""
    env = {k: v for k, v in os.environ.items() if k not in TEMPORAL_ENV}
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "spinbot", "worker", "--workflows"],
        env={**env, "TEMPORAL_ADDRESS": plain_temporal, "SPINBOT_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        client = await connect(plain_temporal)
        for _ in range(300):
            if set(SEARCH_ATTRIBUTES) <= set(await _custom_attributes(client)):
                break
            assert worker.returncode is None, "the worker exited"
            await asyncio.sleep(0.1)
        assert set(SEARCH_ATTRIBUTES) <= set(await _custom_attributes(client))
    finally:
        worker.terminate()
        _, stderr = await asyncio.wait_for(worker.communicate(), 20)
    assert b"Traceback" not in stderr, stderr.decode()


@pytest.mark.parametrize(
    "list_status, add_status",
    [(None, RPCStatusCode.PERMISSION_DENIED), (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED)],
    ids=["add-denied", "list-and-add-denied"],
)
@pytest.mark.parametrize("role", [["worker", "--workflows"], ["api"], ["relay"]])
def test_where_registering_is_forbidden_startup_fails_naming_what_to_create(
    list_status, add_status, role, database_url
):
    with LockedTemporalPeer(list_status, add_status) as peer:
        result = _spinbot(*role, SPINBOT_TEMPORAL_ADDRESS=peer.address, SPINBOT_DATABASE_URL=database_url)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith("cannot start: SearchAttributesMissing: search attributes JobStatus, JobPipeline")
    assert (
        "`temporal operator search-attribute create --namespace default "
        "--name JobStatus --type Keyword --name JobPipeline --type Keyword`" in line
    )
    assert (
        "`tcld namespace search-attributes add --namespace default "
        "--search-attribute JobStatus=Keyword --search-attribute JobPipeline=Keyword`" in line
    )
    assert add_status.name in line
    assert "AddSearchAttributes" in peer.calls


async def test_where_listing_is_forbidden_existing_attributes_are_found_by_query(clean_env):
    """Temporal Cloud with the attributes created beforehand: nothing to add, start-up goes on."""
    with LockedTemporalPeer(RPCStatusCode.PERMISSION_DENIED, defined=SEARCH_ATTRIBUTES) as peer:
        client = await connect(peer.address)
        assert await ensure_search_attributes(client) == []
        assert "AddSearchAttributes" not in peer.calls
        assert any(call.startswith("CountWorkflowExecutions JobStatus") for call in peer.calls)

    with LockedTemporalPeer(RPCStatusCode.PERMISSION_DENIED, defined=("JobStatus",)) as peer:
        client = await connect(peer.address)
        with pytest.raises(SearchAttributesMissing, match=r"search attributes JobPipeline \(Keyword\) are missing"):
            await ensure_search_attributes(client)


def test_sdk_environment_configuration_and_explicit_settings_win(clean_env, tmp_path):
    assert connect_options() == {"target_host": "127.0.0.1:7233", "namespace": "default"}

    clean_env.setenv("TEMPORAL_ADDRESS", "ns1.acct.tmprl.cloud:7233")
    clean_env.setenv("TEMPORAL_NAMESPACE", "ns1.acct")
    clean_env.setenv("TEMPORAL_API_KEY", "secret-key")
    options = connect_options()
    assert (options["target_host"], options["namespace"], options["api_key"], options["tls"]) == (
        "ns1.acct.tmprl.cloud:7233",
        "ns1.acct",
        "secret-key",
        True,
    )
    explicit = connect_options("temporal.internal:7233", "spinbot")
    assert (explicit["target_host"], explicit["namespace"], explicit["api_key"]) == (
        "temporal.internal:7233",
        "spinbot",
        "secret-key",
    )

    clean_env.delenv("TEMPORAL_API_KEY")
    (tmp_path / "client.pem").write_text("CERT")
    (tmp_path / "client.key").write_text("KEY")
    clean_env.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "client.pem"))
    clean_env.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(tmp_path / "client.key"))
    tls = connect_options()["tls"]
    assert not isinstance(tls, bool)
    assert (tls.client_cert, tls.client_private_key) == (b"CERT", b"KEY")

    clean_env.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "missing.pem"))
    with pytest.raises(TemporalConfigError, match=r"missing\.pem"):
        connect_options()


def test_unusable_temporal_configuration_is_one_clear_line(tmp_path):
    result = _spinbot(
        "relay",
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(tmp_path / "missing.pem"),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(tmp_path / "missing.key"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith("settings error: Temporal client configuration")
    assert "missing.pem" in result.stderr and "Traceback" not in result.stderr
