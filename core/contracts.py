"""Config files: loaded once, validated against their JSON Schemas (core/schemas.py), with errors that name the
file and field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from config import CONFIG_DIR
from core.schemas import first_error
from core.settings import settings
from workflows.inputs import ServiceRuntime
from workflows.names import ACTIVITY_QUEUE


class ConfigError(Exception):
    """A config file is missing, is not JSON, or breaks its schema."""


class ContractError(ValueError):
    """A document broke a wire contract; the message names the field."""


def check(doc: Any, schema_file: str, definition: str | None = None) -> Any:
    """Return `doc` if it satisfies the schema, else raise ContractError naming the field."""
    problem = first_error(doc, schema_file, definition)
    if problem:
        raise ContractError(problem)
    return doc


# Files a SPINBOT_CONFIG_DIR must hold; the others, when absent there, are the shipped ones.
OWN_FILES = ("capabilities.json", "pipelines.json")


def config_path(name: str, directory: Path = CONFIG_DIR) -> Path:
    """Where config file `name` is read from: `directory`, or the shipped folder for an optional file it lacks."""
    path = directory / name
    if name not in OWN_FILES and not path.exists():
        return CONFIG_DIR / name
    return path


def load_config(name: str, schema_file: str, directory: Path = CONFIG_DIR) -> dict:
    path = config_path(name, directory)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    problem = first_error(doc, schema_file)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return doc


@dataclass(frozen=True)
class Bridge:
    """Names shared with the data plane (config/redis.bridge.json); never spelled elsewhere."""

    data_stream: str
    control_stream: str
    dead_suffix: str
    max_length: int
    workers_group: str
    control_group: str
    status_channel: str
    progress_channel: str
    data_channel: str
    key_prefix: str
    ttl: int
    block_ms: int
    batch_size: int
    claim_idle_ms: int
    heartbeat_ms: int = 3000
    liveness_ttl_ms: int = 15_000
    consumer_seen_ms: int = 60_000

    @classmethod
    def from_doc(cls, doc: dict) -> Bridge:
        relay = doc.get("relay", {})
        dataplane = doc.get("dataplane", {})
        return cls(
            data_stream=doc["streams"]["data"],
            control_stream=doc["streams"]["control"],
            dead_suffix=doc["streams"]["deadLetterSuffix"],
            max_length=doc["streams"].get("maxLength", 100_000),
            workers_group=doc["groups"]["workers"],
            control_group=doc["groups"]["control"],
            status_channel=doc["channels"]["status"],
            progress_channel=doc["channels"]["progress"],
            data_channel=doc["channels"]["data"],
            key_prefix=doc["jobs"]["keyPrefix"],
            ttl=doc["jobs"]["ttl"],
            block_ms=relay.get("blockMs", 5000),
            batch_size=relay.get("batchSize", 64),
            claim_idle_ms=relay.get("claimIdleMs", 30_000),
            heartbeat_ms=dataplane.get("heartbeatMs", 3000),
            liveness_ttl_ms=dataplane.get("livenessTtlMs", 15_000),
            consumer_seen_ms=dataplane.get("consumerSeenMs", 60_000),
        )

    # Pub/sub messages have no stream of their own; their dead letters are filed under this name.
    pubsub_source = "channel"

    def dead_letter(self, stream: str) -> str:
        return stream + self.dead_suffix

    @property
    def events_backlog(self) -> str:
        """Our own stream (not the data plane's): events waiting for PostgreSQL to come back."""
        return f"{self.key_prefix}events:backlog"

    @property
    def dead_letter_streams(self) -> list[str]:
        return [self.dead_letter(name) for name in (self.data_stream, self.control_stream, self.pubsub_source)]

    def job_key(self, job_id: str) -> str:
        return f"{self.key_prefix}{job_id}"

    def status_key(self, job_id: str) -> str:
        return f"{self.key_prefix}{job_id}:status"

    def progress_key(self, job_id: str) -> str:
        return f"{self.key_prefix}{job_id}:progress"

    def pushed_key(self, job_id: str, run_id: str, segment: object, attempt: object) -> str:
        """The stream entry id of one segment push: at most one entry per (job, run, segment, attempt)."""
        return f"{self.key_prefix}{job_id}:pushed:{run_id}:{segment}:{attempt}"

    def last_push_key(self, job_id: str) -> str:
        """The stream entry id of the job's latest segment push, for withdrawing it on cancel."""
        return f"{self.key_prefix}{job_id}:pushed"

    @property
    def liveness_key(self) -> str:
        """Sorted set of reference data-plane workers in the group, each scored with its heartbeat's expiry (ms)."""
        return f"{self.data_stream}:{self.workers_group}:alive"

    def channel(self, kind: str, job_id: str) -> str:
        return {"status": self.status_channel, "progress": self.progress_channel, "data": self.data_channel}[
            kind
        ] + job_id

    @property
    def channel_patterns(self) -> list[str]:
        return [self.status_channel + "*", self.progress_channel + "*", self.data_channel + "*"]


@dataclass(frozen=True)
class Contracts:
    """Every config file, validated."""

    capabilities: dict
    python_capabilities: dict
    pipelines: dict
    bridge: Bridge
    directory: Path = field(default=CONFIG_DIR, compare=False)

    def path(self, name: str) -> Path:
        """The file `name` was read from, for messages that name it."""
        return config_path(name, self.directory)

    def services(self, plane: str) -> dict[str, dict]:
        manifest = self.capabilities if plane == "node" else self.python_capabilities
        return {cap["id"]: cap for cap in manifest["capabilities"]}


def load_contracts(directory: Path = CONFIG_DIR) -> Contracts:
    """Load and validate every config file; raises ConfigError naming the file and field."""
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: not a folder (SPINBOT_CONFIG_DIR must name one holding {', '.join(OWN_FILES)})"
        )
    node = load_config("capabilities.json", "plane-manifest.schema.json", directory)
    python = load_config("python-capabilities.json", "plane-manifest.schema.json", directory)
    for name, manifest, plane in (("capabilities.json", node, "node"), ("python-capabilities.json", python, "python")):
        for i, cap in enumerate(manifest["capabilities"]):
            if cap["plane"] != plane:
                raise ConfigError(f"{config_path(name, directory)}: capabilities/{i}/plane: must be {plane!r}")
            if plane == "node" and cap["runtime"]["timeoutSeconds"] == -1:
                # Node-plane services run as Temporal activities, which need a time limit.
                raise ConfigError(
                    f"{config_path(name, directory)}: capabilities/{i}/runtime/timeoutSeconds: the node plane "
                    "needs a limit in seconds (-1, no limit, is for the data plane's manifest only)"
                )
    pipelines = load_config("pipelines.json", "pipelines.schema.json", directory)
    bridge = load_config("redis.bridge.json", "redis-bridge.schema.json", directory)
    return Contracts(node, python, pipelines["pipelines"], Bridge.from_doc(bridge), directory)


@cache
def contracts() -> Contracts:
    """The config of this process, loaded once: SPINBOT_CONFIG_DIR when set, else the shipped files."""
    return load_contracts(settings().config_dir or CONFIG_DIR)


def python_timeouts(contracts: Contracts) -> dict[str, float]:
    """`runtime.timeoutSeconds` of each python-plane service; -1 (or below) means no limit of its own."""
    return {cap["id"]: float(cap["runtime"]["timeoutSeconds"]) for cap in contracts.python_capabilities["capabilities"]}


def service_runtimes(contracts: Contracts) -> dict[str, ServiceRuntime]:
    """How each node-plane service runs, read from `runtime` in config/capabilities.json."""
    runtimes = {}
    for cap in contracts.capabilities["capabilities"]:
        runtime = cap["runtime"]
        retry = runtime.get("retry") or {}
        runtimes[cap["id"]] = ServiceRuntime(
            task_queue=runtime.get("taskQueue") or ACTIVITY_QUEUE,
            timeout_seconds=float(runtime["timeoutSeconds"]),
            max_attempts=retry.get("maxAttempts", 3),
            initial_interval_seconds=retry.get("initialIntervalSeconds", 1.0),
            backoff_coefficient=retry.get("backoffCoefficient", 2.0),
        )
    return runtimes
