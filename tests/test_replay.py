"""Determinism: recorded histories of the job workflow replay against the current workflow code, and a change to
the command sequence is caught by that replay.

The histories are recorded from real runs by tests/test_replay_paths.py (SPINBOT_RECORD_HISTORIES=1 writes them);
the *_before_patches ones predate the `workflow.patched` changes, and the *_before_every_patch_above ones record one
marker per change (before `EVERY_PATCH_ABOVE`); both are kept so those runs still replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from core.payloads import DATA_CONVERTER
from tests.altered_workflows import (
    ExtraTimerJobWorkflow,
    SkipsFirstSyncJobWorkflow,
    UnchangedJobWorkflow,
    WallClockJobWorkflow,
)
from workflows.job import JobWorkflow

HISTORIES = Path(__file__).parent / "histories"
COMMITTED = sorted(HISTORIES.glob("*.json"))
# The negative tests replay one run of the current code and one from before the patches (a replay that fails
# takes seconds, so not every history).
ALTERED_AGAINST = [HISTORIES / "hybrid.json", HISTORIES / "sadtalker_failed_before_patches.json"]


def committed(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
async def test_committed_history_replays(path):
    # With the converter our workers read histories with (core.payloads), as they would after a restart.
    await Replayer(workflows=[JobWorkflow], data_converter=DATA_CONVERTER).replay_workflow(committed(path))


# --- a non-deterministic change is caught (the altered workflows: tests/altered_workflows.py) ----------------


@pytest.mark.parametrize("path", ALTERED_AGAINST, ids=lambda p: p.stem)
async def test_an_unchanged_subclass_replays(path):
    await Replayer(workflows=[UnchangedJobWorkflow]).replay_workflow(committed(path))


@pytest.mark.parametrize("altered", [ExtraTimerJobWorkflow, SkipsFirstSyncJobWorkflow], ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", ALTERED_AGAINST, ids=lambda p: p.stem)
async def test_a_changed_command_sequence_is_caught(path, altered):
    with pytest.raises(workflow.NondeterminismError) as caught:
        await Replayer(workflows=[altered]).replay_workflow(committed(path))
    assert "Nondeterminism error" in str(caught.value)
    print(f"\n{path.stem} against {altered.__name__}: {caught.value}")


async def test_the_replay_sandbox_catches_a_wall_clock_read():
    """The workers run workflows unsandboxed by default (SPINBOT_WORKFLOW_SANDBOX): this replay is the guard."""
    history = committed(HISTORIES / "hybrid.json")
    with pytest.raises(RuntimeError, match=r"Cannot access datetime\.datetime\.now"):
        await Replayer(workflows=[WallClockJobWorkflow]).replay_workflow(history)
    # Unsandboxed, the same code replays: only the sandbox stands between it and production.
    await Replayer(workflows=[WallClockJobWorkflow], workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(
        history
    )
