"""Determinism: recorded histories of the job workflow replay against the current workflow code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.e2e import outcome, submit
from workflows.job import JobWorkflow

HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_committed_history_replays(path):
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    await Replayer(workflows=[JobWorkflow]).replay_workflow(history)


@pytest.mark.parametrize(
    "name, request_body",
    [
        ("sadtalker", {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "replay"}}}),
        (
            "sadtalker_failed",
            {
                "mode": "fixed_graph",
                "variant": "sadtalker",
                "params": {"script": {"prompt": "replay"}, "generate_video": {"simulateFailure": "boom"}},
            },
        ),
    ],
)
async def test_fresh_history_replays(stack, llm, name, request_body):
    """Run a job now and replay its history; SPINBOT_RECORD_HISTORIES=1 also saves it under tests/histories."""
    job_id = await submit(stack, request_body)
    await outcome(stack, job_id)
    history = await stack.temporal.get_workflow_handle(job_id).fetch_history()
    await Replayer(workflows=[JobWorkflow]).replay_workflow(history)
    if os.environ.get("SPINBOT_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())
