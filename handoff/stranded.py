"""Jobs whose workflow ended outside the job: terminated by an operator (the Temporal Web UI, `temporal workflow
terminate`), timed out, or failed in Temporal itself.

Such a run never reaches its last step. PostgreSQL, Redis and every client would show the job running for ever,
and retention would never count it finished. Every cleanup interval, each relay asks Temporal's visibility for runs
that closed that way: terminated or timed out, or failed or cancelled while their JobStatus search attribute still
said unfinished (a workflow that fails or is cancelled ends so itself, once its last step recorded it).

- If this run's last step got as far as Redis (its `ending` in `job:<id>` names this run) but not PostgreSQL (down,
  or refusing the write), clients have already been told how the job ended: the relay writes the job's row as that
  step would have.
- Otherwise it records the job `failed`, as the workflow's cancel step would have: its segment taken back from
  `process:data` if no worker has read it, its Redis keys (with a finished job's short TTL), a `failed` status
  message that carries the reason, and last the job's row with a status event.

The row is what marks the job done: a round cut short before it is done again in full. Either way it is done under
the row's lock, taken only while the row is as the round read it (core/row_lock.py): of relays whose rounds meet on
one job, one tells clients and counts it; a round that finds the row held or changed looks again next round. A job
already recorded finished, or whose workflow runs on in a later run (a reset, a retry), is left alone. So is a job
without a row (nothing shows it running).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core import jobkeys
from core.contracts import Bridge
from core.event_rows import announcement
from core.failures import job_error
from core.logs import log_event
from core.metrics import JOB_SECONDS, JOBS_CLOSED_OUT, JOBS_FINISHED
from core.segment_entries import expire_finished_job, queue_expire_finished, queue_withdraw, withdrawn
from core.store import Store, is_job_id
from core.supervise import TaskHealth
from core.temporal import RPC_TIMEOUT
from core.timestamps import now_ms
from handoff.unstarted import UnstartedRetries
from workflows import graph as g
from workflows.names import CONTROL_SOURCE, JOB_WORKFLOW, STATUS_ATTRIBUTE
from workflows.status import JobStatus, NodeStatus

log = logging.getLogger(__name__)

# How each way of ending outside the job is told to clients: the error's code, and what happened.
ENDINGS = {
    WorkflowExecutionStatus.TERMINATED: ("Terminated", "terminated in Temporal"),
    WorkflowExecutionStatus.TIMED_OUT: ("TimedOut", "timed out in Temporal"),
    WorkflowExecutionStatus.FAILED: ("WorkflowFailed", "its workflow failed in Temporal"),
    WorkflowExecutionStatus.CANCELED: ("Cancelled", "cancelled in Temporal"),
}
VISIBILITY_LAG = timedelta(minutes=5)  # visibility is eventually consistent: each round looks back this far more
FIRST_LOOKBACK = timedelta(days=7)  # a relay starting looks this far back: runs that closed while none was running
REASON_CHARS = 500


def stranded_query(since: datetime) -> str:
    """Job runs closed since `since` outside the job. The attribute is no proof for a run terminated or timed out:
    the workflow upserts it with its last step, whose PostgreSQL write may never have succeeded."""
    finished = ", ".join(f"'{status}'" for status in jobkeys.TERMINAL)
    return (
        f"WorkflowType = '{JOB_WORKFLOW}' AND CloseTime > '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}' AND "
        f"(ExecutionStatus IN ('Terminated', 'TimedOut') "
        f"OR (ExecutionStatus IN ('Failed', 'Canceled') AND {STATUS_ATTRIBUTE} NOT IN ({finished})))"
    )


def _from_ms(ms: str) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms.isdigit() else None


def closed_graph(graph: dict, message: str, code: str) -> dict:
    """The graph as the workflow would have left it: what ran or could run failed with the reason, the rest skipped."""
    graph = copy.deepcopy(graph)
    in_flight = [n["id"] for n in graph["nodes"] if n.get("status") == NodeStatus.RUNNING]
    g.fail_unfinished(graph, [*in_flight, *(n["id"] for n in g.ready_nodes(graph))], message, code)
    g.skip_unreachable(graph)
    graph.setdefault("metadata", {})["failure"] = {"nodeId": None, "message": message, "code": code}
    return graph


class StrandedJobs:
    def __init__(
        self,
        client: Client,
        redis: aioredis.Redis,
        store: Store,
        bridge: Bridge,
        interval_seconds: float,
        finished_key_seconds: int,
        first_lookback: timedelta = FIRST_LOOKBACK,
        retry_settled_seconds: float = 60.0,
        visibility_lag: timedelta = VISIBILITY_LAG,
    ):
        self.client, self.redis, self.store, self.bridge = client, redis, store, bridge
        self.interval_seconds, self.finished_key_seconds = interval_seconds, finished_key_seconds
        self.since, self.visibility_lag = datetime.now(UTC) - first_lookback, visibility_lag
        self.unstarted = UnstartedRetries(client, redis, store, bridge, retry_settled_seconds, finished_key_seconds)

    async def run(self, health: TaskHealth) -> None:
        """A round every interval until cancelled; an outage, or a job that could not be recorded, fails the round
        (reported in the task's health), not the task."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("looking for stranded jobs failed (%s: %s); next round soon", type(exc).__name__, exc)
                health.failing(exc)
            else:
                health.serving()
            await asyncio.sleep(self.interval_seconds)

    async def sweep(self) -> list[str]:
        """One round; returns the jobs of retries that never started, put back to `failed`, then those whose end it
        recorded. A job it could not record is tried again next round, and never holds up the others; the first
        such error is raised once all were tried."""
        started = datetime.now(UTC)
        closed, errors = await self.unstarted.sweep()
        look_again_from = started  # a run whose row was held or changed is listed again next round
        async for run in self.client.list_workflows(stranded_query(self.since), rpc_timeout=RPC_TIMEOUT):
            try:
                if run.status not in ENDINGS:
                    continue
                recorded = await self.close_out(run.id, run.run_id, run.status, run.close_time)
                if recorded:
                    closed.append(run.id)
                elif recorded is None and run.close_time is not None:
                    look_again_from = min(look_again_from, run.close_time)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    log.info("job %s: its run %s is gone from Temporal (%s)", run.id, run.run_id, exc.message)
                else:
                    errors.append(exc)
            except Exception as exc:  # one job's error (bytes PostgreSQL refuses, Redis read-only) is that job's
                log.exception("job %s: could not record its end in Temporal; next round tries again", run.id)
                errors.append(exc)
        if errors:
            raise errors[0]
        self.since = look_again_from - self.visibility_lag
        return closed

    async def close_out(
        self, job_id: str, run_id: str, status: WorkflowExecutionStatus, closed_at: datetime | None = None
    ) -> bool | None:
        """Whether it recorded the job's end; None when the row was held or had changed (another relay's round, or a
        progress report being written): the next round looks again."""
        row = await self.store.job(job_id) if is_job_id(job_id) else None
        if row is None or row["status"] in jobkeys.TERMINAL:
            return False
        latest = await self.client.get_workflow_handle(job_id).describe(rpc_timeout=RPC_TIMEOUT)
        graph = row["last_graph"]
        if latest.run_id != run_id or not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
            return False
        code, what = ENDINGS[status]
        details: dict[str, object]  # for the log line
        if ending := await self._ended_in_redis(job_id, run_id):
            recorded, status_recorded = await self._record_row(job_id, run_id, row["updated"], ending), ending[0]
            closed_at = _from_ms(ending[3]) or closed_at  # when its last step ended it
            what_happened, details = "job's end recorded from Redis", {"status": status_recorded}
        else:
            reason = await self._reason(job_id, run_id)
            graph = closed_graph(graph, f"{what}: {reason}" if reason else what, code)
            recorded = await self._record(job_id, run_id, row["updated"], graph, row["progress"])
            status_recorded = JobStatus.FAILED
            what_happened, details = "job failed outside its workflow", {"error": job_error(graph)}
        if not recorded:
            return None
        log_event(log, what_happened, level=logging.WARNING, job_id=job_id, **details)
        JOBS_CLOSED_OUT.labels(code=code).inc()
        JOBS_FINISHED.labels(status=status_recorded).inc()  # as the workflow's last step would have counted it
        JOB_SECONDS.observe(max(0.0, ((closed_at or datetime.now(UTC)) - row["created"]).total_seconds()))
        return True

    async def _reason(self, job_id: str, run_id: str) -> str:
        """What the operator gave as the reason to terminate (the run's last event), if that is how it ended."""
        request = GetWorkflowExecutionHistoryReverseRequest(
            namespace=self.client.namespace,
            execution=WorkflowExecution(workflow_id=job_id, run_id=run_id),
            maximum_page_size=1,
        )
        reply = await self.client.workflow_service.get_workflow_execution_history_reverse(request, timeout=RPC_TIMEOUT)
        for event in reply.history.events:
            if event.HasField("workflow_execution_terminated_event_attributes"):
                reason = event.workflow_execution_terminated_event_attributes.reason
                return reason.replace("\x00", "")[:REASON_CHARS]  # PostgreSQL takes no NUL, in text or in JSON
        return ""

    async def _ended_in_redis(self, job_id: str, run_id: str) -> tuple[str, float, dict, str] | None:
        """(status, progress, graph, when) as this run's last step wrote them to Redis, if it got that far."""
        graph_json, created, ending_json = await self.redis.hmget(
            self.bridge.job_key(job_id), "graph", "created", jobkeys.ENDING_FIELD
        )
        try:
            ending, graph = json.loads(ending_json or "null"), json.loads(graph_json or "null")
            status, progress, nodes = ending["status"], float(ending["progress"]), graph["nodes"]
        except (TypeError, ValueError, KeyError):  # no ending (the step got no further), or not one we wrote
            return None
        if ending.get("runId") != run_id or status not in jobkeys.TERMINAL or not isinstance(nodes, list):
            return None  # another run's ending: a reset or a retry of this job ended before this run's first step
        if ending.get("graph") != jobkeys.graph_digest(str(graph_json)) or not 0.0 <= progress <= 1.0:
            return None  # the graph was written again since: a data-plane worker recorded a node failed
        return status, progress, graph, str(created or now_ms())

    async def _record_row(
        self, job_id: str, run_id: str, seen_updated: datetime, ending: tuple[str, float, dict, str]
    ) -> bool:
        """The PostgreSQL half of the run's last step, with the status message it announced as that step's row; under
        the row's lock, as `_record`, so that one relay counts it. False if the row is held or changed."""
        status, progress, graph, created = ending
        fields: dict = {"status": status, "source": CONTROL_SOURCE}
        if status == JobStatus.FAILED:
            fields["error"] = job_error(graph)
        *_, event = announcement(self.bridge, "status", job_id, fields, created, f"{run_id}/status/{status}")
        assert event is not None  # a status message has a row
        async with self.store.held(job_id, seen_updated) as conn:
            if conn is None:
                return False
            await self.store.save_snapshot(job_id, status, progress, graph, [event], conn=conn)
        await expire_finished_job(self.redis, self.bridge, job_id, run_id, graph, self.finished_key_seconds)
        return True

    async def _record(self, job_id: str, run_id: str, seen_updated: datetime, graph: dict, progress: float) -> bool:
        """As the workflow's cancel step records its end, with the row last (see the module's docstring), under the
        row's lock: of two relays in the same round, one tells clients. False if the row is held or changed."""
        created = now_ms()
        fields = {"status": JobStatus.FAILED, "source": CONTROL_SOURCE, "error": job_error(graph)}
        channel, raw, event = announcement(self.bridge, "status", job_id, fields, created, f"{run_id}/status/failed")
        assert event is not None  # a status message has a row
        async with self.store.held(job_id, seen_updated) as conn:
            if conn is None:
                return False
            pipe = self.redis.pipeline(transaction=False)
            queue_withdraw(pipe, self.bridge, job_id)
            jobkeys.set_graph(pipe, self.bridge, job_id, json.dumps(graph, separators=(",", ":")), created)
            jobkeys.set_state(pipe, self.bridge, job_id, JobStatus.FAILED, progress, g.progress_ceiling(graph))
            queue_expire_finished(pipe, self.bridge, job_id, run_id, graph, self.finished_key_seconds)
            pipe.publish(channel, raw)
            withdrawal, *_ = await pipe.execute()
            withdrawn(self.bridge, job_id, withdrawal)
            await self.store.save_snapshot(job_id, JobStatus.FAILED, progress, graph, [event], conn=conn)
        return True
