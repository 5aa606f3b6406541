"""The per-job Redis keys the frontend and the data plane read (PROTOCOL §4), written in pipelines."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

from redis.asyncio.client import Pipeline

from core.contracts import Bridge
from workflows.status import FINISHED_JOB

TERMINAL = FINISHED_JOB

# A key these scripts leave as it is keeps its TTL (a finished job's is shortened at finish, see
# `expire_finished`); only a key without one is given one.
_KEEP_TTL = """
if redis.call('TTL', KEYS[1]) == -1 then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Only ever up: the API's first 0, and a snapshot that names no ceiling.
_RAISE_PROGRESS = (
    """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1') or -1
if tonumber(ARGV[1]) > current then
  return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""
    + _KEEP_TTL
)

# A late 'running' must not undo a finished job, nor a late 'advertised' a running one.
_ADVANCE_STATUS = (
    """
local current = redis.call('GET', KEYS[1])
if not (current == 'completed' or current == 'failed' or (current and ARGV[1] == 'advertised')) then
  return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""
    + _KEEP_TTL
)


# The most progress the job may show until the workflow's next change, kept in the job:<id> hash.
CEILING_FIELD = "progressCeiling"
ENDING_FIELD = "ending"

# The workflow's snapshot is authoritative: progress lands in [its progress, its ceiling], so a value
# reported too high (or left from an earlier run) cannot stick; within that range it never moves back.
_SNAPSHOT_PROGRESS = """
local floor_text, ceiling_text = ARGV[1], ARGV[2]
local floor, ceiling = tonumber(floor_text), tonumber(ceiling_text)
if ceiling < floor then
  ceiling, ceiling_text = floor, floor_text
end
redis.call('HSET', KEYS[2], ARGV[4], ceiling_text)
local text = redis.call('GET', KEYS[1])
local current = tonumber(text or '')
if not current or current < floor then
  text = floor_text
elseif current > ceiling then
  text = ceiling_text
end
return redis.call('SET', KEYS[1], text, 'EX', ARGV[3])
"""

# Progress reported on pub/sub (by either plane) only rises, and never past the job's ceiling; a job
# without one (unknown, expired, not started) is not given any. The key keeps the TTL the workflow's steps gave it:
# a late report must not keep a finished job's key for jobs.ttl.
_REPORT_PROGRESS = """
local ceiling_text = redis.call('HGET', KEYS[2], ARGV[3])
local ceiling = tonumber(ceiling_text or '')
if not ceiling then
  return 0
end
local text, value = ARGV[1], tonumber(ARGV[1])
if value > ceiling then
  text, value = ceiling_text, ceiling
end
local current_text = redis.call('GET', KEYS[1])
local current = tonumber(current_text or '-1') or -1
if value > current then
  if current_text and redis.call('TTL', KEYS[1]) > 0 then return redis.call('SET', KEYS[1], text, 'KEEPTTL') end
  return redis.call('SET', KEYS[1], text, 'EX', ARGV[2])
end
return 0
"""


def format_progress(progress: float) -> str:
    return f"{progress:.6f}".rstrip("0").rstrip(".") or "0"


def _sane(progress: float) -> bool:
    return isinstance(progress, (int, float)) and math.isfinite(progress) and 0.0 <= progress <= 1.0


def set_state(
    pipe: Pipeline, bridge: Bridge, job_id: str, status: str, progress: float, ceiling: float | None = None
) -> None:
    """The workflow's own state: its status wins; progress is set within [progress, ceiling] when the
    ceiling is given (see `_SNAPSHOT_PROGRESS`), else only moves forward."""
    pipe.set(bridge.status_key(job_id), status, ex=bridge.ttl)
    if ceiling is None or not _sane(ceiling):
        raise_progress(pipe, bridge, job_id, progress)
    elif _sane(progress):
        pipe.eval(
            _SNAPSHOT_PROGRESS,
            2,
            bridge.progress_key(job_id),
            bridge.job_key(job_id),
            format_progress(progress),
            format_progress(ceiling),
            bridge.ttl,
            CEILING_FIELD,
        )


def report_progress(pipe: Pipeline, bridge: Bridge, job_id: str, progress: float) -> None:
    """Progress a plane published: raised up to the job's ceiling, never past it, never for an unknown job."""
    if _sane(progress):
        pipe.eval(
            _REPORT_PROGRESS,
            2,
            bridge.progress_key(job_id),
            bridge.job_key(job_id),
            format_progress(progress),
            bridge.ttl,
            CEILING_FIELD,
        )


def advance_status(pipe: Pipeline, bridge: Bridge, job_id: str, status: str) -> None:
    pipe.eval(_ADVANCE_STATUS, 1, bridge.status_key(job_id), status, bridge.ttl)


def raise_progress(pipe: Pipeline, bridge: Bridge, job_id: str, progress: float) -> None:
    if not _sane(progress):
        return
    pipe.eval(_RAISE_PROGRESS, 1, bridge.progress_key(job_id), format_progress(progress), bridge.ttl)


# The API's first write of a job's graph must not replace one its workflow already recorded (nor its TTL).
_SET_GRAPH_IF_ABSENT = """
if redis.call('HSETNX', KEYS[1], 'graph', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'created', ARGV[2])
  return redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if redis.call('TTL', KEYS[1]) == -1 then
  return redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
"""


def set_graph_if_absent(pipe: Pipeline, bridge: Bridge, job_id: str, graph_json: str, created_ms: str) -> None:
    pipe.eval(_SET_GRAPH_IF_ABSENT, 1, bridge.job_key(job_id), graph_json, created_ms, bridge.ttl)


def set_graph(pipe: Pipeline, bridge: Bridge, job_id: str, graph_json: str, created_ms: str) -> None:
    key = bridge.job_key(job_id)
    pipe.hset(key, mapping={"graph": graph_json, "created": created_ms})
    pipe.expire(key, bridge.ttl)


def set_ending(pipe: Pipeline, bridge: Bridge, job_id: str, run_id: str, status: str, progress: float, graph_json: str):
    """Which run ended the job and how, with a digest of the graph it ended with (a data-plane worker may write the
    graph again later). A relay records the job's row from it when the run is terminated before the same step
    reached PostgreSQL (handoff/stranded.py)."""
    ending = {"runId": run_id, "status": status, "progress": progress, "graph": graph_digest(graph_json)}
    pipe.hset(bridge.job_key(job_id), ENDING_FIELD, json.dumps(ending))


def graph_digest(graph_json: str) -> str:
    return hashlib.sha1(graph_json.encode()).hexdigest()


def expire_finished(pipe: Pipeline, bridge: Bridge, job_id: str, seconds: int, others: Sequence[str] = ()) -> None:
    """A finished job's keys, and `others` of its own, go `seconds` after it finished (never later than jobs.ttl):
    its status and graph are in PostgreSQL, and Redis holds the work in flight, not a record of every job."""
    ttl = min(seconds, bridge.ttl)
    keys = (bridge.job_key, bridge.status_key, bridge.progress_key, bridge.last_push_key)
    for name in (*(key(job_id) for key in keys), *others):
        pipe.expire(name, ttl)
