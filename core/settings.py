"""One typed settings object, read from SPINBOT_* environment variables and validated at start-up."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value):
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPINBOT_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_format: Literal["auto", "json", "text"] = "auto"
    # A folder with capabilities.json and pipelines.json (and, optionally, python-capabilities.json and
    # redis.bridge.json; those it lacks are the shipped ones), validated at start-up like the shipped files.
    config_dir: Path | None = None

    # Unset: the Temporal SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
    # TEMPORAL_TLS_*, TEMPORAL_PROFILE), else 127.0.0.1:7233 / default. Set, these two win over it.
    temporal_address: str | None = None
    temporal_namespace: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"

    api_host: str = "127.0.0.1"
    api_port: int = 3000
    api_keys: CommaList = []
    cors_origins: CommaList = ["http://localhost:3001", "http://127.0.0.1:3001", "https://ui.myspinbot.local"]
    max_body_bytes: int = 1 << 20
    # Slow clients cannot pin connections: a request head must arrive whole within this time and size,
    # an idle keep-alive connection is closed after api_keep_alive_seconds, and past api_max_connections
    # (connections plus requests in progress, WebSockets included) new requests are answered 503.
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    api_keep_alive_seconds: int = Field(default=5, ge=1)
    api_max_connections: int = Field(default=4096, ge=1)
    api_max_header_bytes: int = Field(default=64 << 10, ge=1024)
    # A WebSocket client whose socket takes nothing for this long (it stopped reading) is closed with 1013.
    ws_send_timeout_seconds: float = Field(default=10.0, gt=0)
    # Progress pushed to WebSocket clients at most this often per job (statuses always at once); 0: every rise.
    ws_progress_pushes_per_second: float = Field(default=10.0, ge=0)
    upload_max_bytes: int = 50 << 20

    llm_endpoint: str = "http://localhost:11434"
    # Further LLM URLs a job's script node may name in params.endpoint; no other URL is ever called.
    llm_endpoints: CommaList = []
    llm_model: str = "llama3"
    llm_temperature: float = 0.7
    llm_timeout_ms: int = 60_000

    # Run workflow code in Temporal's sandbox. Off by default: under it a sadtalker job took ~50 ms longer (py-spy:
    # the sandbox exec()s code for each activation and each payload). Determinism is guarded by the sandboxed replay
    # of every committed history in CI (tests/test_replay*.py) and by workflow.patched; turn it on to have a forbidden
    # call (a clock, I/O) fail at run time as well.
    workflow_sandbox: bool = False

    # The ceiling of one wait for the data plane; each wait is the segment's own declared time when shorter.
    segment_timeout_seconds: float = 2 * 3600
    # Stream entries and pub/sub messages larger than this are contract errors (dead-lettered, never parsed).
    max_entry_bytes: int = Field(default=4 << 20, gt=0)
    # A stream entry whose handling failed this many times (crashes, not outages) is dead-lettered.
    max_deliveries: int = Field(default=5, ge=1)
    # Temporal's limit on one payload (its blob size limit, 2 MiB by default): larger handbacks cannot be signalled.
    temporal_payload_limit_bytes: int = Field(default=2 << 20, gt=0)
    capabilities_timeout_seconds: float = 10.0
    capabilities_cache_seconds: float = 60.0
    # A retry whose API died before Temporal took the new run leaves the job `advertised` with no run. Once it has
    # been so this long (longer than a retry's start call may take), relays put it back to `failed`, and another
    # retry is accepted meanwhile.
    retry_settled_seconds: float = Field(default=60.0, gt=0)

    # job_events rows of a finished (completed or failed) job are deleted this many hours after it finished;
    # its jobs row (status, last graph, artifacts) stays. 0: at the next cleanup.
    retention_hours: float = Field(default=7 * 24, ge=0)
    # A finished job's Redis keys (job:<id>, its :status, :progress, :pushed and its segments' push marks) expire
    # this many seconds after it finished (at most jobs.ttl of redis.bridge.json); its status is then read from
    # PostgreSQL.
    finished_key_seconds: int = Field(default=3600, ge=1)
    # Entries of process:data, process:control and the event backlog that every consumer group has read and acked
    # are trimmed once older than this. An entry a group has not read, or has pending, is kept: in the event backlog
    # until written, in process:data and process:control until older than segment_timeout_seconds plus this.
    stream_retention_seconds: float = Field(default=300, ge=0)
    # Each dead-letter stream keeps at most this many entries (the newest).
    dead_letter_max_entries: int = Field(default=1000, ge=1)
    # Dead letters older than this are trimmed.
    dead_letter_retention_hours: float = Field(default=7 * 24, ge=0)
    # job_events keeps at most one progress row per job per this many seconds (the highest progress reported in
    # it); job:<id>:progress still gets every one. 0: one row per message.
    progress_event_seconds: float = Field(default=5.0, ge=0)
    # How often each relay applies the retention settings above (trims streams, deletes expired events).
    cleanup_interval_seconds: float = Field(default=30.0, gt=0)

    minio_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("MINIO_ENDPOINT", "SPINBOT_MINIO_ENDPOINT")
    )
    minio_access_key: str = Field(
        default="minioadmin", validation_alias=AliasChoices("MINIO_ACCESS_KEY", "SPINBOT_MINIO_ACCESS_KEY")
    )
    minio_secret_key: str = Field(
        default="minioadmin", validation_alias=AliasChoices("MINIO_SECRET_KEY", "SPINBOT_MINIO_SECRET_KEY")
    )
    minio_secure: bool = False
    artifacts_dir: Path = Path(".data/objects")
    # Download links of GET /api/jobs/{id}/artifacts stay valid this long.
    artifact_url_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Signs the folder store's download links; unset, each API process makes its own (links then work only on
    # the replica that made them). MinIO/S3 links are presigned with the MinIO credentials instead.
    artifact_url_secret: str | None = None

    worker_metrics_port: int | None = None
    # Address the metrics ports of workers, relays and the data plane bind to; 0.0.0.0 in containers.
    metrics_host: str = "127.0.0.1"
    # Serve the API's GET /metrics without an API key (for Prometheus) while every other route needs one.
    metrics_public: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, values):
        for key in ("api_keys", "cors_origins", "llm_endpoints"):
            if key in values:
                values[key] = _split(values[key])
        return values

    @model_validator(mode="after")
    def _refuse_unsafe_production(self):
        if self.environment == "production":
            if not self.api_keys:
                raise ValueError("SPINBOT_API_KEYS must be set in production")
            if self.minio_endpoint and self.minio_secret_key == "minioadmin":
                raise ValueError("MINIO_SECRET_KEY must not be the default in production")
        return self

    @property
    def llm_allowed_endpoints(self) -> tuple[str, ...]:
        """The only LLM URLs a script node may call: the default one and SPINBOT_LLM_ENDPOINTS."""
        return tuple(dict.fromkeys(url.rstrip("/") for url in (self.llm_endpoint, *self.llm_endpoints)))

    @property
    def llm_defaults(self) -> dict:
        """LLM params a `script` node gets when its own params omit them."""
        return {
            "model": self.llm_model,
            "temperature": self.llm_temperature,
            "endpoint": self.llm_endpoint,
            "timeoutMs": self.llm_timeout_ms,
        }


@cache
def settings() -> Settings:
    return Settings()
