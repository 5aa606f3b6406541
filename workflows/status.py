"""Job and node statuses (PROTOCOL §1, §4). Lower-case strings on the wire; StrEnum so they compare and
serialise as those strings. They live on the bottom floor because the workflow itself needs them."""

from enum import StrEnum


class JobStatus(StrEnum):
    ADVERTISED = "advertised"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class NodeStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


FINISHED_JOB = (JobStatus.COMPLETED, JobStatus.FAILED)
WAITING_NODE = (NodeStatus.PENDING, NodeStatus.READY)
