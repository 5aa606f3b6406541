"""Retries that never started. A retry resets its job to `advertised`, then asks Temporal for the new run; an API
that dies in between (kill -9, out of memory) leaves the job `advertised` with no run, shown queued for ever.

Each relay's stranded-jobs round puts such a job back to `failed`, as it was before the retry, once it has been
`advertised` for SPINBOT_RETRY_SETTLED_SECONDS (no retry can still be starting) and the run the retry replaced is
still the job's latest. Its clients are told `failed` again, with the job's error. It may then be retried as any
failed job."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from core import jobkeys
from core.contracts import Bridge
from core.event_rows import announcement
from core.failures import job_error
from core.logs import log_event
from core.retry_rows import retry_never_started
from core.store import Store, millis
from core.temporal import RPC_TIMEOUT
from core.timestamps import now_ms
from workflows import graph as g
from workflows.names import CONTROL_SOURCE
from workflows.status import JobStatus

log = logging.getLogger(__name__)


class UnstartedRetries:
    def __init__(
        self, client: Client, redis: aioredis.Redis, store: Store, bridge: Bridge, settled: float, finished_key: int
    ):
        self.client, self.redis, self.store, self.bridge = client, redis, store, bridge
        self.settled_seconds, self.finished_key_seconds = settled, finished_key

    async def sweep(self) -> tuple[list[str], list[Exception]]:
        """One round: the jobs put back to `failed`, and the errors of those that could not be (tried next round)."""
        restored: list[str] = []
        errors: list[Exception] = []
        after: tuple = ()
        while rows := await self.store.unstarted_retries(self.settled_seconds, after):
            after = (rows[-1]["updated"], rows[-1]["job_id"])
            for row in rows:
                job_id = str(row["job_id"])
                try:
                    if await self.restore(job_id, row):
                        restored.append(job_id)
                except Exception as exc:
                    log.exception("job %s: could not put an unstarted retry back to failed; next round tries", job_id)
                    errors.append(exc)
        return restored, errors

    async def restore(self, job_id: str, row: dict) -> bool:
        if not retry_never_started(row, await self._latest_run(job_id)):
            return False  # a new run goes on (its first step records it), or ended (see stranded.py)
        graph = row["last_graph"]
        progress = g.job_progress(graph)
        fields = {"status": JobStatus.FAILED, "source": CONTROL_SOURCE, "error": job_error(graph)}
        event_id = f"unstarted/{millis(row['updated'])}/status/failed"  # one row, however many relays try
        channel, raw, event = announcement(self.bridge, "status", job_id, fields, now_ms(), event_id)
        assert event is not None  # a status message has a row

        async def tell() -> None:  # Redis first, then the row, which marks it done
            pipe = self.redis.pipeline(transaction=False)
            jobkeys.set_state(pipe, self.bridge, job_id, JobStatus.FAILED, progress, g.progress_ceiling(graph))
            jobkeys.expire_finished(pipe, self.bridge, job_id, self.finished_key_seconds)
            pipe.publish(channel, raw)
            await pipe.execute()

        if not await self.store.restore_failed(job_id, row["updated"], progress, event, tell):
            return False  # retried meanwhile (that retry's run records the job), or another relay has it
        log_event(log, "unstarted retry put back to failed", level=logging.WARNING, job_id=job_id)
        return True

    async def _latest_run(self, job_id: str) -> WorkflowExecutionDescription | None:
        try:
            return await self.client.get_workflow_handle(job_id).describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None  # its runs are gone from Temporal (the namespace's retention)
            raise
