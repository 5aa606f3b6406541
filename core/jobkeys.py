"""The per-job Redis keys the frontend and the data plane read (PROTOCOL §4), written in pipelines."""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from core.contracts import Bridge
from workflows.status import FINISHED_JOB

TERMINAL = FINISHED_JOB

# Progress never moves backwards, whoever reports it.
_RAISE_PROGRESS = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1') or -1
if tonumber(ARGV[1]) > current then
  return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return redis.call('EXPIRE', KEYS[1], ARGV[2])
"""

# A late 'running' must not undo a finished job, nor a late 'advertised' a running one.
_ADVANCE_STATUS = """
local current = redis.call('GET', KEYS[1])
if current == 'completed' or current == 'failed' or (current and ARGV[1] == 'advertised') then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
"""


def format_progress(progress: float) -> str:
    return f"{progress:.6f}".rstrip("0").rstrip(".") or "0"


def set_state(pipe: Pipeline, bridge: Bridge, job_id: str, status: str, progress: float) -> None:
    """The workflow's own state: its status wins; progress still only moves forward."""
    pipe.set(bridge.status_key(job_id), status, ex=bridge.ttl)
    raise_progress(pipe, bridge, job_id, progress)


def advance_status(pipe: Pipeline, bridge: Bridge, job_id: str, status: str) -> None:
    pipe.eval(_ADVANCE_STATUS, 1, bridge.status_key(job_id), status, bridge.ttl)


def raise_progress(pipe: Pipeline, bridge: Bridge, job_id: str, progress: float) -> None:
    pipe.eval(_RAISE_PROGRESS, 1, bridge.progress_key(job_id), format_progress(progress), bridge.ttl)


# The API's first write of a job's graph must not replace one its workflow already recorded.
_SET_GRAPH_IF_ABSENT = """
if redis.call('HSETNX', KEYS[1], 'graph', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'created', ARGV[2])
end
return redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


def set_graph_if_absent(pipe: Pipeline, bridge: Bridge, job_id: str, graph_json: str, created_ms: str) -> None:
    pipe.eval(_SET_GRAPH_IF_ABSENT, 1, bridge.job_key(job_id), graph_json, created_ms, bridge.ttl)


def set_graph(pipe: Pipeline, bridge: Bridge, job_id: str, graph_json: str, created_ms: str) -> None:
    key = bridge.job_key(job_id)
    pipe.hset(key, mapping={"graph": graph_json, "created": created_ms})
    pipe.expire(key, bridge.ttl)
