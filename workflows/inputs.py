"""One dataclass per workflow, activity and signal input, so fields can be added without breaking history."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServiceRuntime:
    """How a node-plane service runs: from `runtime` in the capabilities manifest."""

    task_queue: str
    timeout_seconds: float
    max_attempts: int = 3
    initial_interval_seconds: float = 1.0
    backoff_coefficient: float = 2.0


@dataclass
class JobInput:
    graph: dict
    runtimes: dict[str, ServiceRuntime]
    segment_timeout_seconds: float  # the ceiling of any one wait for the data plane
    attempt: int = 1
    # `runtime.timeoutSeconds` of each python-plane service (-1: no limit of its own), from its manifest.
    python_timeouts: dict[str, float] = field(default_factory=dict)
    resumed: Resumed | None = None  # set when a run continues as new: where the previous run left off


@dataclass
class Resumed:
    """What a job's previous run had reached when it continued as new (history stays bounded)."""

    status: str
    progress: float
    segment: int


@dataclass
class NodeTask:
    """One node-plane node, as its activity receives it."""

    job_id: str
    node_id: str
    service: str
    params: dict
    input: dict
    progress_start: float = 0.0
    progress_end: float = 0.0


@dataclass
class JobSnapshot:
    """The job's state after a change: persisted, published, and (with push) handed to the data plane."""

    job_id: str
    graph: dict
    status: str
    progress: float
    announce_status: bool = False
    announce_progress: bool = False
    data: list = field(default_factory=list)
    push: bool = False
    # Workflow time of the change (ms): the `created` of every message it publishes, so a re-run of the
    # same step publishes identical messages and the event log records them once.
    at_ms: int = 0
    withdraw: bool = False  # the job was cancelled: take back a pushed segment no worker has read yet


@dataclass
class Handback:
    """A graph the data plane handed back (or left in job:<id> when it failed without handing back)."""

    graph: dict
    # A failure the data plane reported without a readable graph: the segment fails with this reason.
    reason: str = ""
