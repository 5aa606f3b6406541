"""Logs a person can follow: a line per lifecycle step with the job's id as a field; expected failures in one line."""

from __future__ import annotations

import json
import logging

from core.logs import ExpectedFailuresQuiet, JsonFormatter
from tests.e2e import outcome, submit

SADTALKER = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "logs"}}}


def lines_of(records: list[logging.LogRecord], job_id: str) -> list[dict]:
    """The records about one job, as the JSON lines the roles would print (filter included)."""
    quiet, formatter = ExpectedFailuresQuiet(), JsonFormatter()
    shown = [record for record in records if quiet.filter(record)]
    lines = [json.loads(formatter.format(record)) for record in shown]
    return [line for line in lines if line.get("job_id") == job_id]


async def test_a_completed_jobs_story_in_its_log_lines(stack, llm, caplog):
    caplog.set_level(logging.INFO)
    job_id = await submit(stack, SADTALKER)
    assert await outcome(stack, job_id) == ("completed", None)
    messages = [line["msg"] for line in lines_of(caplog.records, job_id)]
    for step in (
        "job submitted",
        "job running",
        "node started",
        "node completed",
        "segment handed to the data plane",
        "segment handed back",
        "job completed",
    ):
        assert step in messages, (step, messages)
    node_lines = [line for line in lines_of(caplog.records, job_id) if line["msg"] == "node completed"]
    assert node_lines[0]["node_id"] == "script" and node_lines[0]["seconds"] >= 0


async def test_an_llm_that_is_down_is_one_line_per_attempt_without_traceback(stack, llm, caplog):
    caplog.set_level(logging.INFO)
    llm.status = 500  # Ollama answers errors: each attempt fails and Temporal retries it
    job_id = await submit(stack, SADTALKER)
    state, _ = await outcome(stack, job_id, timeout=60)
    assert state == "failed"
    about_job = lines_of(caplog.records, job_id)
    failed = [line for line in about_job if line["msg"] == "node failed"]
    assert len(failed) == 3 and [line["attempt"] for line in failed] == [1, 2, 3]  # maxAttempts of the manifest
    assert all("HTTP 500" in line["error"] and "exc" not in line for line in failed)
    ending = next(line for line in about_job if line["msg"] == "job failed")
    assert ending["error"]["nodeId"] == "script"
    every_line = [JsonFormatter().format(r) for r in caplog.records if ExpectedFailuresQuiet().filter(r)]
    assert not any("Traceback" in line for line in every_line), "expected failures carry no traceback"
