"""`spinbot` job commands as a user runs them: a real CLI process against the live control plane."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from spinbot.ports import free_port
from tests.e2e import outcome, submit
from tests.stack import api_replica

pytestmark = pytest.mark.timeout(90)


@dataclass
class Run:
    code: int
    out: str
    err: str


async def spinbot(api_url: str, *args: str, timeout: float = 60, **env: str) -> Run:
    """Run `python -m spinbot ARGS` against `api_url`, without blocking the stack in this event loop."""
    environment = {k: v for k, v in os.environ.items() if k not in ("SPINBOT_API_KEY", "COLUMNS")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spinbot",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, "SPINBOT_API_URL": api_url, **env},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Run(proc.returncode if proc.returncode is not None else -1, out.decode(), err.decode())


def one_clear_line(run: Run) -> str:
    assert "Traceback" not in run.err + run.out, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    return lines[0]


def graph_file(tmp_path, pipeline: str, fail: bool = False) -> str:
    nodes: list[dict] = [{"id": "script", "service": "llm.generate_script", "plane": "node", "status": "pending"}]
    edges = []
    if fail:
        nodes.append(
            {
                "id": "render",
                "service": "dummy.dummy_task",
                "plane": "python",
                "status": "pending",
                "params": {"simulateFailure": "no render today"},
            }
        )
        edges.append({"from": "script", "to": "render"})
    graph = {"schema": "langgraph.v1", "workflowId": "x", "context": {"pipeline": pipeline}, "nodes": nodes}
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps({**graph, "edges": edges}))
    return str(path)


async def test_submit_follow_exits_0_when_the_job_completes(stack, llm):
    run = await spinbot(stack.api_url, "submit", "sadtalker", "--prompt", "a fox explains DNS", "--follow")
    assert run.code == 0, run.out + run.err
    lines = run.out.splitlines()
    job_id = lines[0]
    assert uuid.UUID(job_id)
    for node in ("script (Write script)", "train_voice (Train voice)", "postprocess_video (Post-process video)"):
        assert any(line.startswith(f"✓ {node} completed") for line in lines), run.out
    assert lines[-1].startswith(f"job {job_id} completed")
    assert await outcome(stack, job_id) == ("completed", None)
    assert llm.requests[-1]["prompt"].count("a fox explains DNS") >= 1


async def test_submit_follow_exits_1_naming_the_failing_node_and_its_message(stack, llm):
    llm.status = 404  # Ollama: model not found
    run = await spinbot(stack.api_url, "submit", "sadtalker", "-p", "script.prompt=x", "--follow")
    assert run.code == 1, run.out + run.err
    job_id = run.out.splitlines()[0]
    last = run.out.strip().splitlines()[-1]
    assert last.startswith(f"job {job_id} failed at node script: "), run.out
    assert "HTTP 404" in last and "model 'x' not found" in last
    assert any(line.startswith("✗ script (Write script) failed") for line in run.out.splitlines())
    assert any(line.startswith("- train_voice (Train voice) skipped") for line in run.out.splitlines())


async def test_a_data_plane_failure_is_named_too_and_follow_resolves_a_prefix(stack, llm):
    job_id = await submit(
        stack,
        {
            "mode": "fixed_graph",
            "variant": "sadtalker",
            "params": {"script": {"prompt": "x"}, "generate_video": {"simulateFailure": "GPU fell over"}},
        },
    )
    run = await spinbot(stack.api_url, "follow", job_id[:13])
    assert run.code == 1, run.out + run.err
    assert run.out.strip().splitlines()[-1] == (
        f"job {job_id} failed at node generate_video: GPU fell over (SIMULATED_FAILURE)"
    )


async def test_jobs_filters_and_show_by_prefix(stack, llm, tmp_path):
    pipeline = f"cli-{uuid.uuid4().hex[:8]}"
    done = await spinbot(stack.api_url, "submit", graph_file(tmp_path, pipeline), "--prompt", "x", "-f")
    failed = await spinbot(stack.api_url, "submit", graph_file(tmp_path, pipeline, fail=True), "-p", "script.prompt=x")
    assert done.code == 0 and failed.code == 0, done.err + failed.err
    done_id, failed_id = done.out.splitlines()[0], failed.out.splitlines()[0]
    assert (await outcome(stack, failed_id))[0] == "failed"

    listed = await spinbot(stack.api_url, "jobs", "--pipeline", pipeline)
    assert listed.code == 0 and "(2 of 2," in listed.out
    assert done_id in listed.out and failed_id in listed.out
    only_failed = await spinbot(stack.api_url, "jobs", "--pipeline", pipeline, "--status", "failed", "--limit", "5")
    assert failed_id in only_failed.out and done_id not in only_failed.out
    bad = await spinbot(stack.api_url, "jobs", "--status", "finished")
    assert bad.code == 2 and "not a job status" in one_clear_line(bad)

    shown = await spinbot(stack.api_url, "show", failed_id[:12])
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0].startswith(f"{failed_id} failed")
    assert f"job {failed_id} failed at node render:" in shown.out
    assert "✓ script completed llm.generate_script on node plane" in shown.out
    assert "✗ render failed dummy.dummy_task on python plane: no render today" in shown.out


async def test_unknown_and_ambiguous_prefixes_are_clear_errors(stack, llm):
    unknown = await spinbot(stack.api_url, "show", "ffffffff-ffff-f")
    assert unknown.code == 2 and "no job id starts with 'ffffffff-ffff-f'" in one_clear_line(unknown)
    not_an_id = await spinbot(stack.api_url, "cancel", "../etc")
    assert not_an_id.code == 2 and "not a job id" in one_clear_line(not_an_id)

    async def first_chars() -> Counter:
        body = (await stack.api.get("/api/jobs", params={"limit": 100, "include": "capabilities"})).json()
        return Counter(job["jobId"][0] for job in body["jobs"])

    script_only = {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x"}}}
    for _ in range(18):  # 17 jobs make two share a first hex digit
        shared = [char for char, n in (await first_chars()).items() if n > 1]
        if shared:
            break
        await submit(stack, script_only)
    assert shared
    ambiguous = await spinbot(stack.api_url, "show", shared[0])
    assert ambiguous.code == 2 and f"'{shared[0]}' is ambiguous" in one_clear_line(ambiguous)


async def test_api_down_and_refused_requests_are_one_line_each(stack):
    down = await spinbot(f"http://127.0.0.1:{free_port()}", "jobs")
    assert down.code == 1 and "cannot reach the API" in one_clear_line(down)
    unknown = await spinbot(stack.api_url, "submit", "no_such_pipeline")
    assert unknown.code == 2 and "400 unknown variant" in one_clear_line(unknown) and "no_such_pipeline" in unknown.err
    bad_param = await spinbot(stack.api_url, "submit", "sadtalker", "-p", "prompt")
    assert bad_param.code == 2 and "expected NODE.KEY=VALUE" in one_clear_line(bad_param)
    no_prompt = await spinbot(stack.api_url, "submit", "sadtalker")
    assert no_prompt.code == 2 and "params.prompt" in one_clear_line(no_prompt)
    unknown_with_prompt = await spinbot(stack.api_url, "submit", "nope", "--prompt", "x")
    assert unknown_with_prompt.code == 2 and "unknown pipeline 'nope'" in one_clear_line(unknown_with_prompt)
    not_running = await spinbot(stack.api_url, "retry", str(uuid.uuid4()))
    assert not_running.code == 2 and "404" in one_clear_line(not_running)


async def test_api_key_is_sent_over_http_and_websocket(stack, llm):
    job_id = await submit(stack, {"mode": "fixed_graph", "variant": "sadtalker", "params": {"script": {"prompt": "x"}}})
    assert await outcome(stack, job_id) == ("completed", None)
    settings = stack.settings.model_copy(update={"api_keys": ["cli-key"]})
    async with api_replica(settings, stack.temporal) as url:
        refused = await spinbot(url, "jobs")
        assert refused.code == 2 and "401" in one_clear_line(refused)
        followed = await spinbot(url, "follow", job_id, SPINBOT_API_KEY="cli-key")
        assert followed.code == 0, followed.err
        assert followed.out.strip().splitlines()[-1].startswith(f"job {job_id} completed")
        wrong = await spinbot(url, "follow", job_id, "--api-key", "nope")
        assert wrong.code == 2 and "401" in one_clear_line(wrong)
