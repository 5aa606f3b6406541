"""Segments on `process:data`: pushed once per (job, run, segment, attempt), withdrawn while unread when the job ends
early (cancelled in the workflow, or terminated in Temporal: see handoff/stranded.py).

Both are Redis scripts, queued on the caller's pipeline so a state change stays one round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core import jobkeys
from core.contracts import Bridge
from core.metrics import SEGMENTS_WITHDRAWN, SEGMENTS_WITHOUT_CONSUMER
from core.stream_lua import STREAM_HELPERS

log = logging.getLogger(__name__)

# Mark-if-absent plus XADD in one step: a re-run of the same sync finds the mark and adds nothing.
# Then count live consumers: heartbeating reference workers, plus group members without a heartbeat
# (the GPU worker) that have read within consumerSeenMs.
_PUSH_ONCE = (
    STREAM_HELPERS
    + """
local id = redis.call('GET', KEYS[1])
local fresh = 0
if not id then
  id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'jobId', ARGV[3], 'created', ARGV[4], 'graph', ARGV[5])
  redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
  redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
  fresh = 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[3], ARGV[6])
if type(consumers) == 'table' and not consumers.err then
  for _, raw in ipairs(consumers) do
    local c = fields(raw)
    if c['name'] and c['idle'] and not redis.call('ZSCORE', KEYS[4], c['name']) and c['idle'] < tonumber(ARGV[7]) then
      live = live + 1
    end
  end
end
return {id, fresh, live}
"""
)

# Take back the job's latest pushed entry unless a consumer group has already been handed it.
_WITHDRAW = (
    STREAM_HELPERS
    + """
local id = redis.call('GET', KEYS[1])
if not id then return {'', 'none'} end
local ms, seq = parse(id)
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[2])
if type(groups) == 'table' and not groups.err then
  for _, raw in ipairs(groups) do
    local g = fields(raw)
    local lms, lseq = parse(g['last-delivered-id'])
    if ms < lms or (ms == lms and seq <= lseq) then return {id, 'read'} end
    if #redis.call('XPENDING', KEYS[2], g['name'], id, id, 1) > 0 then return {id, 'read'} end
  end
end
redis.call('DEL', KEYS[1])
if redis.call('XDEL', KEYS[2], id) == 0 then return {id, 'gone'} end
return {id, 'withdrawn'}
"""
)


@dataclass
class Segment:
    """Which push this is: the workflow run and the segment tag it wrote into metadata.handoff."""

    job_id: str
    run_id: str
    tag: dict


def queue_push(pipe: Pipeline, bridge: Bridge, segment: Segment, created: str, graph_json: str) -> None:
    """Queue the push on `pipe`; its reply is [entry id, 1 if added now, live consumers]."""
    key = bridge.pushed_key(segment.job_id, segment.run_id, segment.tag.get("segment"), segment.tag.get("attempt"))
    keys = (key, bridge.last_push_key(segment.job_id), bridge.data_stream, bridge.liveness_key)
    args = (bridge.ttl, bridge.max_length, segment.job_id, created, graph_json)
    pipe.eval(_PUSH_ONCE, len(keys), *keys, *args, bridge.workers_group, bridge.consumer_seen_ms)


def pushed(bridge: Bridge, segment: Segment, reply: list) -> dict:
    """What the push did, for the activity's result; warns when no live worker will read it."""
    entry_id, added, live = reply[0], bool(reply[1]), int(reply[2])
    result = {"segment": segment.tag, "entryId": entry_id, "repeated": not added, "liveConsumers": live}
    if not added:
        log.info("job %s segment %s was already pushed as %s; not pushed again", segment.job_id, segment.tag, entry_id)
    if live == 0:
        result["withoutConsumer"] = True
        if added:
            SEGMENTS_WITHOUT_CONSUMER.inc()
        log.warning(
            "job %s: segment %s pushed to %s but no live data-plane worker reads it (group %s); it waits",
            segment.job_id,
            segment.tag,
            bridge.data_stream,
            bridge.workers_group,
        )
    return result


def push_marks(bridge: Bridge, job_id: str, run_id: str, last_tag: dict) -> list[str]:
    """The marks of every segment this run may have pushed, up to its last tag: a finished job's are given its
    keys' short TTL. (A run continued-as-new from another leaves that run's marks to their own TTL.)"""
    last, attempt = last_tag.get("segment"), last_tag.get("attempt")
    if not isinstance(last, int) or isinstance(last, bool):
        return []
    return [bridge.pushed_key(job_id, run_id, segment, attempt) for segment in range(1, last + 1)]


def queue_expire_finished(pipe: Pipeline, bridge: Bridge, job_id: str, run_id: str, graph: dict, seconds: int):
    """A finished job's keys and its run's push marks get the finished TTL: once its row records the end, as Redis
    is the only record of that end until then."""
    last_tag = (graph.get("metadata") or {}).get("handoff") or {}
    jobkeys.expire_finished(pipe, bridge, job_id, seconds, push_marks(bridge, job_id, run_id, last_tag))


async def expire_finished_job(redis: Redis, bridge: Bridge, job_id: str, run_id: str, graph: dict, seconds: int):
    """`queue_expire_finished` in a round trip of its own: once the job's row records the end."""
    pipe = redis.pipeline(transaction=False)
    queue_expire_finished(pipe, bridge, job_id, run_id, graph, seconds)
    await pipe.execute()


def queue_withdraw(pipe: Pipeline, bridge: Bridge, job_id: str) -> None:
    """Queue the withdrawal on `pipe`; its reply is [entry id, outcome]."""
    pipe.eval(_WITHDRAW, 2, bridge.last_push_key(job_id), bridge.data_stream)


def withdrawn(bridge: Bridge, job_id: str, reply: list) -> dict:
    entry_id, outcome = reply[0], reply[1]
    if outcome == "withdrawn":
        SEGMENTS_WITHDRAWN.inc()
        log.info("withdrawn: job %s segment entry %s taken back from %s unread", job_id, entry_id, bridge.data_stream)
    elif outcome == "read":
        log.info("job %s segment entry %s was already read by a data-plane worker; not withdrawn", job_id, entry_id)
    return {"entryId": entry_id or None, "outcome": outcome}
