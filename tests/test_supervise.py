"""core/supervise.py: a background task that raises or returns is logged and restarted with backoff, and says so."""

from __future__ import annotations

import asyncio
import logging

import pytest

from core.supervise import Supervisor, TaskHealth

pytestmark = pytest.mark.timeout(30)


async def test_a_task_that_dies_or_returns_is_restarted_and_reports_its_state(caplog):
    caplog.set_level(logging.WARNING, logger="core.supervise")
    starts: list[int] = []
    serving = asyncio.Event()

    async def flaky(health: TaskHealth) -> None:
        starts.append(len(starts))
        if len(starts) == 1:
            raise RuntimeError("lost its way")
        if len(starts) == 2:
            return  # a loop that should run for ever returned: restarted too
        health.serving()
        serving.set()
        await asyncio.Event().wait()

    tasks = Supervisor()
    health = tasks.start("flaky", flaky)
    assert not health.up and not tasks.all_up
    try:
        await tasks.wait_up(10)
        assert len(starts) == 3 and health.restarts == 2
        assert tasks.all_up and tasks.report()["flaky"]["ok"] and tasks.report()["flaky"]["state"] == "serving"
        messages = [record.getMessage() for record in caplog.records]
        assert any("background task flaky died" in m for m in messages)
        assert any("background task flaky returned" in m for m in messages)
        assert sum("restarting background task flaky" in m for m in messages) == 2
    finally:
        await tasks.stop()
    assert tasks.tasks[0].cancelled() and not health.up and health.state == "stopped"


async def test_a_task_reports_itself_down_while_it_retries():
    tasks = Supervisor()
    recovered = asyncio.Event()

    async def reconnecting(health: TaskHealth) -> None:
        health.serving()
        health.failing(ConnectionError("server gone"))
        await recovered.wait()
        health.serving()
        await asyncio.Event().wait()

    health = tasks.start("reconnecting", reconnecting)
    try:
        await asyncio.sleep(0.05)
        assert tasks.report()["reconnecting"] == {
            "ok": False,
            "state": "ConnectionError: server gone",
            "restarts": 0,
            "forSeconds": pytest.approx(0.0, abs=1.0),
        }
        recovered.set()
        await tasks.wait_up(5)
        assert health.up and health.restarts == 0
    finally:
        await tasks.stop()
