"""Altered copies of the job workflow for tests/test_replay.py, registered under its real name so the recorded
histories replay against them.

They live outside the test module: the replay sandbox imports the module that defines a workflow again, and a test
module brings pytest's assertion rewriting into that import, on the SDK's worker thread (Python 3.11's import lock
then failed there now and then, with a KeyError).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

from workflows.inputs import JobInput
from workflows.job import JobWorkflow
from workflows.names import JOB_WORKFLOW


@workflow.defn(name=JOB_WORKFLOW)
class UnchangedJobWorkflow(JobWorkflow):
    """The control: the same subclassing and registration, no change; every history must still replay."""

    @workflow.run
    async def run(self, job: JobInput) -> dict:
        return await super().run(job)


@workflow.defn(name=JOB_WORKFLOW)
class ExtraTimerJobWorkflow(JobWorkflow):
    """Waits on a timer before anything else: a command the recorded runs never issued."""

    @workflow.run
    async def run(self, job: JobInput) -> dict:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(job)


@workflow.defn(name=JOB_WORKFLOW)
class WallClockJobWorkflow(JobWorkflow):
    """Reads the machine's clock, which a replay elsewhere would read differently."""

    @workflow.run
    async def run(self, job: JobInput) -> dict:
        self.started_at = datetime.now()
        return await super().run(job)


@workflow.defn(name=JOB_WORKFLOW)
class SkipsFirstSyncJobWorkflow(JobWorkflow):
    """Leaves out the first persistence step (a local activity) the recorded runs took."""

    skipped = False

    @workflow.run
    async def run(self, job: JobInput) -> dict:
        return await super().run(job)

    async def _sync(self, *args, **kwargs) -> None:
        if not self.skipped:
            self.skipped = True
            return
        await super()._sync(*args, **kwargs)
