"""Request and response models: the REST contract of PROTOCOL §5, as OpenAPI shows it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FixedGraphRequest(BaseModel):
    mode: Literal["fixed_graph"]
    variant: str = Field(description="A pipeline name from config/pipelines.json")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Params merged into each node, by node id"
    )


class ProcessGraphRequest(BaseModel):
    mode: Literal["process_graph"]
    graph: dict[str, Any] | str = Field(description="A langgraph.v1 graph, as an object or a JSON string")


PlanningRequest = FixedGraphRequest | ProcessGraphRequest


class AcceptedJob(BaseModel):
    jobId: str
    status: Literal["advertised"] = "advertised"
    progress: float = 0
    created: str = Field(description="Milliseconds since epoch, as a string")


class JobError(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"nodeId": "script", "message": "Ollama answered 404", "code": "LlmError"}}
    )
    nodeId: str | None = Field(description="The failed node (null when the job was cancelled)")
    message: str
    code: str


class JobStatus(BaseModel):
    jobId: str
    status: str
    progress: float
    error: JobError | None = Field(default=None, description="Present once the job has failed")


class JobSummary(BaseModel):
    jobId: str
    status: str
    progress: float
    created: int = Field(description="Milliseconds since epoch")
    pipeline: str | None = Field(default=None, description="The pipeline (variant) the job runs")


class Pagination(BaseModel):
    limit: int
    offset: int
    total: int = Field(description="How many jobs match the filters, over all pages")


class JobList(BaseModel):
    jobs: list[JobSummary]
    pagination: Pagination


class JobDetail(BaseModel):
    jobId: str
    status: str
    progress: float
    lastGraph: dict[str, Any] | None
    created: int


class JobEventOut(BaseModel):
    eventId: int
    status: str | None
    progress: float | None
    data: Any = None
    created: int


class JobWithEvents(BaseModel):
    job: JobDetail
    events: list[JobEventOut]


class ErrorBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"error": "job 1234 not found"}})
    error: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Each check is {ok, error?} for a dependency, {ok, state, restarts, forSeconds} for a background task."""

    status: Literal["ready"] = "ready"
    checks: dict[str, dict[str, Any]]


class JobControl(BaseModel):
    jobId: str
    message: str


class LiveGraph(BaseModel):
    jobId: str
    status: str
    progress: float
    graph: dict[str, Any]


class ManifestSource(BaseModel):
    plane: Literal["node", "python"]
    number: int


class CombinedManifest(BaseModel):
    generatedAt: str
    capabilities: list[dict[str, Any]]
    sources: dict[str, ManifestSource]


class Pipeline(BaseModel):
    name: str
    nodes: list[dict[str, Any]] = Field(description="{id, name, service, plane, progressWeight, params} per node")
    edges: list[dict[str, Any]] = Field(description="{from, to, kind} per edge")
    weights: dict[str, float] = Field(description="Each node's progressWeight, by node id")


class PipelineList(BaseModel):
    pipelines: list[Pipeline]


class Artifact(BaseModel):
    nodeId: str
    name: str = Field(description="Where the node's output holds it, e.g. videoArtifact or objects.report.txt")
    bucket: str
    key: str
    contentType: str | None = None
    sizeBytes: int | None = None
    url: str | None = Field(description="A short-lived download link; null when the object is not in storage")
    expiresAt: int | None = Field(description="When `url` stops working, in milliseconds since epoch")


class ArtifactList(BaseModel):
    jobId: str
    artifacts: list[Artifact]
