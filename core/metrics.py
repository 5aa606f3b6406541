"""Prometheus metrics of every role, defined once so names never drift between processes.

Every family lives in the process-wide default registry (tests read it); each role exports only its own
families, through a registry of its own (`role_registry`), plus the process's own figures (CPU, memory).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.registry import Collector

DEAD_LETTERS = Counter("spinbot_dead_letters_total", "Entries and messages set aside as invalid", ["source"])
HANDOFF_SECONDS = Histogram(
    "spinbot_handoff_round_trip_seconds",
    "From the data plane writing a handback (its `created`) to the relay receiving it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600),
)
HANDBACKS = Counter("spinbot_handbacks_total", "Handbacks relayed to workflows", ["outcome"])
EVENTS_DELAYED = Counter(
    "spinbot_events_delayed_total", "Events kept in the backlog stream while PostgreSQL was unavailable"
)
PUBSUB_MESSAGES = Counter("spinbot_pubsub_messages_total", "Pub/sub messages handled by the relay", ["kind"])
STREAM_ENTRIES_TRIMMED = Counter(
    "spinbot_stream_entries_trimmed_total",
    "Stream entries removed by the relays' cleanup: acked and past the retention window, or dead letters past their "
    "cap or age",
    ["stream"],
)
JOB_EVENTS_DELETED = Counter(
    "spinbot_job_events_deleted_total", "job_events rows of jobs finished longer ago than the retention deleted"
)
CLEANUPS = Counter("spinbot_cleanups_total", "Rounds of the relays' retention cleanup", ["outcome"])
JOBS_CLOSED_OUT = Counter(
    "spinbot_jobs_closed_out_total",
    "Jobs whose end a relay recorded because their workflow ended outside the job (terminated, timed out)",
    ["code"],
)
TASK_UP = Gauge("spinbot_task_up", "1 while a supervised background task is serving, else 0", ["task"])
TASK_RESTARTS = Counter("spinbot_task_restarts_total", "Supervised background tasks restarted after dying", ["task"])
SEGMENTS_WITHOUT_CONSUMER = Counter(
    "spinbot_segments_without_consumer_total", "Segments pushed while no live data-plane worker reads the stream"
)
SEGMENTS_WITHDRAWN = Counter("spinbot_segments_withdrawn_total", "Unread segments taken back from a cancelled job")
ENTRIES_TAKEN_OVER = Counter(
    "spinbot_dataplane_entries_taken_over_total", "Entries claimed from data-plane workers whose heartbeat ran out"
)

# HTTP and WebSocket (names of the WebSocket metrics match the service we replace).
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
WS_CONNECTED = Gauge("websocket_clients_connected", "WebSocket clients connected now")
WS_CONNECTIONS = Counter("websocket_connections_total", "WebSocket connections accepted")
WS_RECEIVED = Counter("websocket_messages_received_total", "WebSocket messages received")
WS_SENT = Counter("websocket_messages_sent_total", "WebSocket messages sent")
WS_LIFETIME = Histogram(
    "websocket_client_lifetime_seconds",
    "How long WebSocket clients stay connected",
    buckets=(1, 5, 30, 60, 300, 900, 3600, 14400),
)
WS_ERRORS = Counter("websocket_errors_total", "WebSocket errors (bad messages, slow clients, send failures)", ["kind"])

# Jobs and nodes.
JOBS_SUBMITTED = Counter("spinbot_jobs_submitted_total", "Jobs accepted", ["pipeline"])
JOBS_FINISHED = Counter("spinbot_jobs_finished_total", "Jobs finished", ["status"])
JOB_SECONDS = Histogram(
    "spinbot_job_duration_seconds",
    "From acceptance to completed or failed",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600, 14400),
)
NODE_SECONDS = Histogram(
    "spinbot_node_duration_seconds",
    "Node run time",
    ["service", "plane"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
)

# Read at scrape time by the API from shared state, so every replica reports the cluster's figures.
JOBS_BY_STATUS = Gauge("spinbot_jobs", "Jobs in PostgreSQL by status", ["status"])
DEAD_LETTER_BACKLOG = Gauge("spinbot_dead_letter_entries", "Entries waiting in a dead-letter stream", ["stream"])
DATA_BACKLOG = Gauge("spinbot_data_stream_entries", "Entries in the data-plane stream (process:data)")
EVENTS_BACKLOG = Gauge(
    "spinbot_events_backlog_entries", "Pub/sub messages waiting in the event backlog for PostgreSQL to take them"
)
DATA_PENDING = Gauge("spinbot_data_stream_pending_entries", "Entries a data-plane worker has read and not yet acked")
DATA_CONSUMERS = Gauge("spinbot_data_stream_consumers", "Consumers in the data-plane workers group")
DATA_OLDEST_PENDING = Gauge(
    "spinbot_data_stream_oldest_pending_seconds", "Time since the oldest unacked entry was delivered to a worker"
)

SHARED_TASKS: list[Collector] = [TASK_UP, TASK_RESTARTS]
ROLE_FAMILIES: dict[str, list[Collector]] = {
    "api": [
        HTTP_REQUESTS, HTTP_SECONDS, WS_CONNECTED, WS_CONNECTIONS, WS_RECEIVED, WS_SENT, WS_LIFETIME, WS_ERRORS,
        JOBS_SUBMITTED, JOBS_BY_STATUS, DEAD_LETTER_BACKLOG, DEAD_LETTERS,
        DATA_BACKLOG, DATA_PENDING, DATA_CONSUMERS, DATA_OLDEST_PENDING, EVENTS_BACKLOG, *SHARED_TASKS,
    ],
    "worker": [JOBS_FINISHED, JOB_SECONDS, NODE_SECONDS, SEGMENTS_WITHOUT_CONSUMER, SEGMENTS_WITHDRAWN],
    "relay": [
        HANDBACKS, HANDOFF_SECONDS, PUBSUB_MESSAGES, DEAD_LETTERS, EVENTS_DELAYED,
        STREAM_ENTRIES_TRIMMED, JOB_EVENTS_DELETED, CLEANUPS, JOBS_CLOSED_OUT, SEGMENTS_WITHDRAWN, JOBS_FINISHED,
        JOB_SECONDS, *SHARED_TASKS,
    ],
    "dataplane": [DEAD_LETTERS, ENTRIES_TAKEN_OVER, *SHARED_TASKS],
}  # fmt: skip


def role_registry(role: str) -> CollectorRegistry:
    """The families one role exports, and its process figures; nothing of the other roles."""
    registry = CollectorRegistry()
    for family in ROLE_FAMILIES[role]:
        registry.register(family)
    ProcessCollector(registry=registry)
    return registry


def serve_metrics(port: int | None, host: str, role: str) -> None:
    """Expose this process's metrics on their own port (roles other than the API): the role's own families."""
    if port:
        start_http_server(port, addr=host, registry=role_registry(role))
