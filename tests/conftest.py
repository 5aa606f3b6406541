"""Real services for the whole session: Temporal dev server, Redis, PostgreSQL (all embedded, loopback)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from core.migrate import migrate_url
from core.store import Store, connect_pool
from spinbot.ports import free_port
from spinbot.services import Postgres, start_redis, start_temporal

SUGGEST_CONTINUE_AS_NEW_AT = 400  # events; Temporal's default is 4,096


@dataclass
class Services:
    temporal_address: str
    redis_url: str
    database_url: str


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    base = tmp_path_factory.mktemp("services")
    # Continue-as-new is suggested early here, so the big jobs of the suite prove their runs hand over.
    temporal = start_temporal(
        base / "temporal",
        free_port(),
        None,
        log_path=base / "temporal.log",
        dynamic_config={"limit.historyCount.suggestContinueAsNew": SUGGEST_CONTINUE_AS_NEW_AT},
    )
    redis_server = start_redis(base / "redis", free_port(), persist=False)
    # Unix socket paths must stay short: keep PostgreSQL's folder near the root.
    pg = Postgres(base / "pg")
    yield Services(temporal.url, redis_server.url, pg.url)
    pg.stop()
    redis_server.stop()
    temporal.stop()


@pytest.fixture(scope="session")
async def database_url(services):
    await migrate_url(services.database_url)
    return services.database_url


@pytest.fixture(scope="session")
def redis_url(services):
    return services.redis_url


@pytest.fixture
async def redis_client(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def store(database_url):
    pool = await connect_pool(database_url)
    yield Store(pool)
    await pool.close()


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def ollama():
    from tests.peers import OllamaPeer

    with OllamaPeer() as peer:
        yield peer


@pytest.fixture(scope="session")
async def temporal_client(services):
    from core.temporal import connect

    return await connect(services.temporal_address)


@pytest.fixture(scope="session")
async def stack(services, database_url, temporal_client, ollama, s3_endpoint):
    from core.settings import Settings
    from tests.stack import running_stack

    settings = Settings(
        temporal_address=services.temporal_address,
        redis_url=services.redis_url,
        database_url=database_url,
        llm_endpoint=ollama.url,
        llm_timeout_ms=5000,
        segment_timeout_seconds=60,
        minio_endpoint=s3_endpoint,
        capabilities_timeout_seconds=3,
        upload_max_bytes=1 << 20,
    )
    async with running_stack(settings, temporal_client) as running:
        yield running


@pytest.fixture
def llm(ollama):
    """The Ollama peer, reset to a clean JSON reply for each test."""
    ollama.reset()
    yield ollama
    ollama.reset()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's standalone S3 server for the session, as "127.0.0.1:<port>" (a MinIO endpoint)."""
    import subprocess
    import sys
    from pathlib import Path

    from spinbot.services import Child, popen, wait_for_port

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    moto = Child("moto_server", popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_for_port(port, moto.proc, "moto_server")
        yield f"127.0.0.1:{port}"
    finally:
        moto.stop()
        log.close()
