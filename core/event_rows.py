"""A job_events row, as a relay or a workflow step records a pub/sub message, and the statement that records one."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from core import jobkeys
from core.contracts import Bridge
from core.messages import fingerprint, parse_created


@dataclass
class Event:
    job_id: str
    fingerprint: str
    status: str | None = None
    progress: float | None = None
    data: object = None
    created: datetime | None = None
    # One row per fingerprint holding the highest progress reported under it (coalesced progress), instead of
    # one row per message.
    highest_progress: bool = False


def announcement(
    bridge: Bridge, kind: str, job_id: str, fields: dict, created: str, event_id: str | None
) -> tuple[str, str, Event | None]:
    """A message the control plane publishes about a job's own change, as (channel, raw, its job_events row; None
    for progress, which relays coalesce). `event_id` names the change itself, so the message is recorded once
    however often the step that announces it runs."""
    payload = {"jobId": job_id, **fields, "created": created, **({"eventId": event_id} if event_id else {})}
    channel, raw = bridge.channel(kind, job_id), json.dumps(payload)
    if kind == "progress":
        return channel, raw, None
    status, data, at = fields.get("status"), fields.get("data"), parse_created(created)
    return channel, raw, Event(job_id, fingerprint(channel, raw, event_id), status, None, data, at)


# The row of a coalesced progress interval ($8) takes a higher progress, its time and a new event id (it is now the
# newest event, by time and by id, as if inserted); the same or a lower one, or the same message again, changes
# nothing and counts as already recorded. Any other row, once there, is left as it is.
APPLY_EVENT = """
    WITH ev AS (
        INSERT INTO job_events (job_id, status, progress, data, fingerprint, created)
        SELECT $1, $2, $3, $4, $5, $6
        WHERE EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)
        ON CONFLICT (job_id, fingerprint) DO UPDATE
           SET event_id = nextval(pg_get_serial_sequence('job_events', 'event_id')),
               progress = EXCLUDED.progress, created = EXCLUDED.created
         WHERE $8 AND EXCLUDED.progress > job_events.progress
        RETURNING event_id
    ), up AS (
        UPDATE jobs SET
            progress = GREATEST(progress, LEAST($3, coalesce(progress_ceiling, progress))),
            updated = now()
        WHERE job_id = $1 AND $3::float8 IS NOT NULL AND NOT status = ANY($7::text[])
              AND EXISTS (SELECT 1 FROM ev)
    )
    SELECT (SELECT event_id FROM ev) AS event_id, EXISTS (SELECT 1 FROM jobs WHERE job_id = $1) AS known
"""


def lock_order(args: tuple) -> tuple:
    """Sorted by this (a stable sort), a round takes each job's locks as the workflow's step does: the job's row
    first (through its progress rows, which raise it), then its events in the order they were published (heard)."""
    job_id, _, progress, *_ = args
    return job_id, progress is None


def event_args(event: Event) -> tuple:
    """The parameters of APPLY_EVENT; a message without a time of its own gets the time it is written."""
    progress = event.progress if event.progress is not None and 0.0 <= event.progress <= 1.0 else None
    created = event.created or datetime.now(UTC)
    terminal = list(jobkeys.TERMINAL)
    return (
        uuid.UUID(event.job_id),
        event.status,
        progress,
        event.data,
        event.fingerprint,
        created,
        terminal,
        event.highest_progress,
    )
