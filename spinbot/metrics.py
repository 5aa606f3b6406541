"""Prometheus metrics of every role, defined once so names never drift between processes."""
from prometheus_client import Counter, Histogram

DEAD_LETTERS = Counter("spinbot_dead_letters_total", "Entries and messages set aside as invalid", ["source"])
HANDOFF_SECONDS = Histogram(
    "spinbot_handoff_round_trip_seconds",
    "From pushing a segment to the data plane to its handback arriving",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600),
)
HANDBACKS = Counter("spinbot_handbacks_total", "Handbacks relayed to workflows", ["outcome"])
PUBSUB_MESSAGES = Counter("spinbot_pubsub_messages_total", "Pub/sub messages handled by the relay", ["kind"])
