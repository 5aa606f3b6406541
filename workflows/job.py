"""The job workflow: runs node-plane nodes as activities, hands python-plane segments to the data plane."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from workflows import graph as g
    from workflows import patches as p
    from workflows import segments as s
    from workflows.activity_calls import failure_message, retry_policy
    from workflows.inputs import Handback, JobInput, JobSnapshot, NodeTask, Resumed
    from workflows.names import DATAPLANE_FAILED, HANDBACK, JOB_WORKFLOW, STATE, STATUS_ATTRIBUTE, SYNC_JOB
    from workflows.status import JobStatus, NodeStatus
    from workflows.summaries import node_details, segment_summary, sync_summary

STATUS_KEY = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)
SYNC_TIMEOUT = timedelta(seconds=30)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)


@workflow.defn(name=JOB_WORKFLOW)
class JobWorkflow:
    def __init__(self) -> None:
        self.graph: dict = {}
        self.status: str = JobStatus.QUEUED
        self.progress = 0.0
        self.inbox: list[tuple[str, Handback]] = []
        self.segment = 0
        self.open_segment: dict | None = None  # the tag of the segment the data plane holds
        self.segment_ready: list[str] = []  # python nodes that were ready when the open segment was pushed
        self.segment_deadline: datetime | None = None
        self.segment_seconds = 0.0
        self.changed = False  # wakes the main loop
        self._dirty = False  # something to persist and publish
        self.outputs: list[dict] = []  # node outputs to announce on channel:data at the next sync
        self.in_flight: dict[str, asyncio.Task] = {}
        self.early: s.Kept = []  # handbacks of a segment this execution has not opened yet (see segments.py)
        self.has_every_patch = False  # set first thing in run()

    @workflow.query(name=STATE)
    def state(self) -> dict:
        return {"graph": self.graph, "status": self.status, "progress": self.progress}

    @workflow.signal(name=HANDBACK)
    def handback(self, handback: Handback) -> None:
        self.inbox.append((HANDBACK, handback))
        self.changed = True

    @workflow.signal(name=DATAPLANE_FAILED)
    def dataplane_failed(self, handback: Handback) -> None:
        self.inbox.append((DATAPLANE_FAILED, handback))
        self.changed = True

    @workflow.run
    async def run(self, job: JobInput) -> dict:
        self.has_every_patch = workflow.patched(p.EVERY_PATCH_ABOVE)  # first: before any other command of the run
        self.graph = job.graph
        self.job = job
        if job.resumed:
            self.status, self.progress, self.segment = job.resumed.status, job.resumed.progress, job.resumed.segment
        try:
            await self._drive()
        except asyncio.CancelledError:
            await self._cancel()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        if g.all_completed(self.graph):
            await self._sync(status=JobStatus.COMPLETED, progress=1.0)
            return self.state()
        raise await self._mark_failed()

    async def _drive(self) -> None:
        """Start what is ready, wait for any change, record it; until nothing can move."""
        status: str | None = JobStatus.RUNNING  # recorded together with the first nodes started
        early_clear = self._patched(p.CLEAR_WAKEUP_BEFORE_SYNC)
        while True:
            if early_clear:
                self.changed = False  # cleared before the sync: a signal or completion during it must wake us
            if self._continue_as_new_now():
                await self._continue_as_new()
            self._start_ready_nodes()
            push = self._open_segment_if_ready()
            finished = not self.in_flight and self.open_segment is None
            if finished and status is None:
                return  # the ending's own sync records this last change: one round trip fewer
            if push or self._dirty or status:
                await self._sync(status=status, push=push)
                status = None
            if finished:
                return
            if not early_clear:
                self.changed = False  # histories recorded before the patch cleared it here
            try:
                summary = segment_summary(self.graph, self.segment) if self.open_segment else None
                await workflow.wait_condition(
                    lambda: self.changed, timeout=self._segment_time_left(), timeout_summary=summary
                )
            except TimeoutError:
                self._segment_timed_out()
            self._apply_inbox()

    def _continue_as_new_now(self) -> bool:
        """When Temporal suggests it and the job is between steps: nothing running, no segment out."""
        quiet = not self.in_flight and self.open_segment is None and not self.inbox and not self.early
        return quiet and workflow.info().is_continue_as_new_suggested() and self._patched(p.CONTINUE_AS_NEW)

    async def _continue_as_new(self) -> None:
        if self._dirty or self.outputs:
            await self._sync()
        await workflow.wait_condition(workflow.all_handlers_finished)
        resumed = Resumed(self.status, self.progress, self.segment)
        workflow.continue_as_new(dataclasses.replace(self.job, graph=self.graph, resumed=resumed))

    def _patched(self, change: str) -> bool:
        return self.has_every_patch or workflow.patched(change)

    # --- node plane -------------------------------------------------------------------------

    def _start_ready_nodes(self) -> None:
        for node in g.ready_nodes(self.graph, "node"):
            node["status"] = NodeStatus.RUNNING
            node["input"] = g.merged_input(self.graph, node)
            self._dirty = True
            self.in_flight[node["id"]] = asyncio.create_task(self._run_node(node))

    async def _run_node(self, node: dict) -> None:
        runtime = self.job.runtimes[node["service"]]
        task = NodeTask(
            job_id=self.graph["workflowId"],
            node_id=node["id"],
            service=node["service"],
            params=node.get("params") or {},
            input=node["input"],
            progress_start=self.progress,
            progress_end=g.job_progress(self.graph, also_done=[node["id"]]),
        )
        try:
            output = await workflow.execute_activity(
                node["service"],
                task,
                result_type=dict,
                task_queue=runtime.task_queue,
                start_to_close_timeout=timedelta(seconds=runtime.timeout_seconds),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                # On cancel, wait until the activity has acknowledged it before the job is recorded as cancelled.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                retry_policy=retry_policy(runtime),
                summary=node.get("name") or node["id"],
            )
        except ActivityError as error:
            message, code = failure_message(error)
            node["status"] = NodeStatus.FAILED
            node["error"] = {"message": message, "code": code}
        else:
            node["status"] = NodeStatus.COMPLETED
            node["output"] = output
            self.outputs.append({"nodeId": node["id"], "output": output})
        finally:
            self.in_flight.pop(node["id"], None)
            self._dirty = True
            self.changed = True

    # --- python plane -----------------------------------------------------------------------

    def _open_segment_if_ready(self) -> bool:
        ready = g.ready_nodes(self.graph, "python") if self.open_segment is None else []
        if not ready:
            return False
        self.segment += 1
        self.open_segment = {"segment": self.segment, "attempt": self.job.attempt}
        if not self._patched(p.SEGMENT_TAG_WITHOUT_RUN_ID):
            # Histories from before the patch tagged the run too. Without it, a run reset by an operator
            # rebuilds on replay the very tag it already pushed, and accepts that segment's handback.
            self.open_segment["runId"] = workflow.info().run_id
        self.segment_ready = [node["id"] for node in ready]
        self.segment_seconds = self._segment_budget()
        self.segment_deadline = workflow.now() + timedelta(seconds=self.segment_seconds)
        self.graph.setdefault("metadata", {})["handoff"] = self.open_segment
        opened, self.early = s.reopened(self.early, self.open_segment, self.job.attempt, self.segment)
        self.inbox[:0], self.changed = opened, self.changed or bool(opened)  # applied once the push is recorded
        return True

    def _segment_budget(self) -> float:
        ceiling = self.job.segment_timeout_seconds
        if not self.job.python_timeouts or not self._patched(p.SEGMENT_TIMEOUT_FROM_MANIFEST):
            return ceiling
        return g.python_work_budget(self.graph, self.job.python_timeouts, ceiling)

    def _segment_time_left(self) -> timedelta | None:
        if self.open_segment is None:
            return None
        assert self.segment_deadline is not None  # set whenever a segment is opened
        return max(self.segment_deadline - workflow.now(), timedelta(milliseconds=1))

    def _segment_timed_out(self) -> None:
        if self.open_segment is None:
            return
        message = f"data plane did not hand back segment {self.segment} within {self.segment_seconds:g}s"
        self._fail_python_nodes(self.segment_ready, message, "SegmentTimeout")
        self.open_segment = None

    def _apply_inbox(self) -> None:
        while self.inbox:
            kind, handback = self.inbox.pop(0)
            tag = s.tag_of(handback)
            if self.open_segment is None or tag != self.open_segment:
                if s.not_opened_yet(tag, self.job.attempt, self.segment) and self._patched(p.KEEP_EARLY_HANDBACK):
                    # Before the patch such a handback was dropped, and the job waited for its segment timeout.
                    workflow.logger.info("keeping %s for segment %s until this run reopens it", kind, tag)
                    self.early.append((kind, handback))
                    continue
                workflow.logger.info("ignoring stale or repeated %s for segment %s", kind, tag)
                continue
            merged = g.merge_handback(self.graph, handback.graph)
            if kind == DATAPLANE_FAILED and not g.failed_nodes(merged):
                if handback.reason and self._patched(p.FAILURE_WITHOUT_GRAPH):
                    # The data plane said the job failed but its graph was overwritten: fail the segment now.
                    self._fail_python_nodes(self.segment_ready, handback.reason, "DataPlaneFailed")
                    self.open_segment = None
                continue  # the status said failed, but the graph shows no failed python node yet
            self.graph = merged
            self.open_segment = None
            self._dirty = True
            untouched = [n["id"] for n in g.ready_nodes(self.graph, "python") if n["id"] in self.segment_ready]
            # A worker that hands back without running what was ready would make us push forever.
            self._fail_python_nodes(untouched, "data plane handed back without running this node", "NotRun")

    def _fail_python_nodes(self, node_ids: list[str], message: str, code: str) -> None:
        self._dirty = g.fail_unfinished(self.graph, node_ids, message, code) or self._dirty

    # --- endings and records ------------------------------------------------------------------

    async def _mark_failed(self) -> ApplicationError:
        """Skip what can no longer run, record the job failed; the error names the first failed node."""
        failed = g.failed_nodes(self.graph)
        g.skip_unreachable(self.graph)
        first = failed[0] if failed else None
        reason = (first.get("error") or {}).get("message", "failed") if first else "no node could run"
        where = f'node "{first["id"]}" ({first["service"]})' if first else "graph"
        self.graph.setdefault("metadata", {})["failure"] = {"nodeId": first and first["id"], "message": reason}
        await self._sync(status=JobStatus.FAILED)
        return ApplicationError(f"{where} failed: {reason}", type="JobFailed", non_retryable=True)

    async def _cancel(self) -> None:
        """Stop node-plane work, mark the job failed as cancelled, and leave nothing waiting."""
        stopping = list(self.in_flight.values())
        for task in stopping:
            task.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)
        g.mark_cancelled(self.graph, self.segment_ready if self.open_segment else [])
        g.skip_unreachable(self.graph)
        self.open_segment = None
        self.graph.setdefault("metadata", {})["failure"] = {"nodeId": None, "message": "cancelled"}
        await self._sync(status=JobStatus.FAILED, withdraw=True)

    async def _sync(
        self, status: str | None = None, progress: float | None = None, push: bool = False, withdraw: bool = False
    ) -> None:
        """Persist and publish the state once per change (one local activity, batched side effects)."""
        new_progress = max(self.progress, progress if progress is not None else g.job_progress(self.graph))
        announce_status = status is not None and status != self.status
        announce_progress = new_progress != self.progress
        if status is not None and announce_status:
            self.status = status
            workflow.upsert_search_attributes([STATUS_KEY.value_set(status)])
        self.progress = new_progress
        outputs, self.outputs, self._dirty = self.outputs, [], False
        workflow.set_current_details(node_details(self.graph))
        await workflow.execute_local_activity(
            SYNC_JOB,
            JobSnapshot(
                job_id=self.graph["workflowId"],
                graph=self.graph,
                status=self.status,
                progress=self.progress,
                announce_status=announce_status,
                announce_progress=announce_progress,
                data=outputs,
                push=push,
                at_ms=int(workflow.now().timestamp() * 1000),
                withdraw=withdraw,
            ),
            start_to_close_timeout=SYNC_TIMEOUT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
            summary=sync_summary(
                status if announce_status else None, self.progress, self.segment if push else None, withdraw
            ),
        )
