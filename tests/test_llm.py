"""llm.generate_script against a real HTTP peer speaking Ollama's /api/generate, with progress on real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.llm import generate_script, parse_script
from activities.resources import Resources
from core.contracts import contracts
from core.settings import Settings
from spinbot.ports import free_port
from workflows.inputs import NodeTask

START, END = 0.1, 0.15


@pytest.fixture
async def resources(redis_client, ollama):
    async with httpx.AsyncClient() as http:
        # The peer is the configured LLM: no other URL may be called.
        yield Resources(Settings(llm_endpoint=ollama.url), contracts(), redis_client, http)


def script_task(job_id: str, **params) -> NodeTask:
    return NodeTask(
        job_id=job_id,
        node_id="script",
        service="llm.generate_script",
        params=params,
        input={},
        progress_start=START,
        progress_end=END,
    )


async def failure(task: NodeTask, res: Resources) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await generate_script(task, res)
    return caught.value


async def test_sends_the_request_ollama_expects_and_returns_the_script(llm, resources, job_id):
    task = script_task(
        job_id,
        prompt="A fox explains DNS",
        tone="playful",
        persona="a teacher",
        length="30 seconds",
        model="llama3.2",
        temperature=0.2,
        endpoint=llm.url,
        timeoutMs=5000,
    )

    out = await generate_script(task, resources)

    body = llm.requests[-1]
    assert (body["model"], body["temperature"], body["stream"]) == ("llama3.2", 0.2, False)
    assert body["options"] == {"temperature": 0.2}
    for part in ("A fox explains DNS", "playful", "a teacher", "30 seconds", '"stagePrompt"', '"narration"'):
        assert part in body["prompt"]
    assert out == {
        "stagePrompt": "A calm studio, soft light.",
        "narration": "Hello from the test peer.",
        "tokensUsed": 42,
        "model": "llama3.2",
        "temperature": 0.2,
        "provider": "ollama",
        "currentProgress": END,
    }


async def test_settings_fill_params_that_are_absent_or_null(llm, resources, job_id):
    settings = Settings(llm_endpoint=llm.url, llm_model="tiny-model", llm_temperature=0.3)
    res = dataclasses.replace(resources, settings=settings)

    out = await generate_script(script_task(job_id, prompt="Hello", model=None), res)

    body = llm.requests[-1]
    assert (body["model"], body["temperature"]) == ("tiny-model", 0.3)
    assert (out["model"], out["temperature"]) == ("tiny-model", 0.3)


@pytest.mark.parametrize(
    "reply",
    [
        '```json\n{"stagePrompt": "A lab at night.", "narration": "Science never sleeps."}\n```',
        '```\n{"stagePrompt": "A lab at night.", "narration": "Science never sleeps."}\n```',
        'Sure! Here is your script:\n{"stagePrompt": "A lab at night.", "narration": "Science never sleeps."}\nEnjoy.',
        '{"script": {"stagePrompt": "A lab at night.", "narration": "Science never sleeps."}}',
    ],
    ids=["fenced-json", "fenced", "in-prose", "nested"],
)
async def test_finds_the_json_wherever_the_model_put_it(llm, resources, job_id, reply):
    llm.reply = reply

    out = await generate_script(script_task(job_id, prompt="Lab", endpoint=llm.url), resources)

    assert (out["stagePrompt"], out["narration"]) == ("A lab at night.", "Science never sleeps.")


async def test_plain_text_falls_back_to_first_line_and_whole_text(llm, resources, job_id):
    llm.reply = "\n  A sunny beach at noon.  \nWaves roll in while I tell you about tides.\n"

    out = await generate_script(script_task(job_id, prompt="Tides", endpoint=llm.url), resources)

    assert out["stagePrompt"] == "A sunny beach at noon."
    assert out["narration"] == "A sunny beach at noon.  \nWaves roll in while I tell you about tides."


def test_json_with_one_field_fills_the_other():
    assert parse_script('{"narration": "Line one.\\nLine two."}') == ("Line one.", "Line one.\nLine two.")
    assert parse_script('{"stagePrompt": "A desk."}') == ("A desk.", "A desk.")


def test_json_without_our_fields_counts_as_plain_text():
    assert parse_script('{"title": "x"}') == ('{"title": "x"}', '{"title": "x"}')


async def test_empty_response_is_retryable(llm, resources, job_id):
    llm.reply = "  \n"

    err = await failure(script_task(job_id, prompt="Quiet", endpoint=llm.url), resources)

    assert (err.type, err.non_retryable) == ("LlmEmptyReply", False)


async def test_slow_reply_times_out_at_timeout_ms(llm, resources, job_id):
    llm.delay = 3.0
    started = time.monotonic()

    err = await failure(script_task(job_id, prompt="Slow", endpoint=llm.url, timeoutMs=300), resources)

    assert time.monotonic() - started < 2.0
    assert (err.type, err.non_retryable) == ("LlmTimeout", False)
    assert llm.url in err.message and "300 ms" in err.message


async def test_unknown_model_is_rejected_for_good(llm, resources, job_id):
    llm.status = 404

    err = await failure(script_task(job_id, prompt="Hi", endpoint=llm.url, model="x"), resources)

    assert (err.type, err.non_retryable) == ("LlmRejected", True)
    assert "model 'x' not found" in err.message and "404" in err.message


async def test_server_error_is_retryable(llm, resources, job_id):
    llm.status = 500

    err = await failure(script_task(job_id, prompt="Hi", endpoint=llm.url), resources)

    assert (err.type, err.non_retryable) == ("LlmServerError", False)
    assert "500" in err.message


@pytest.mark.parametrize(
    "body", ["<html>bad gateway</html>", '{"done": true}', "[1, 2]"], ids=["not-json", "no-response", "not-object"]
)
async def test_reply_we_cannot_read_is_a_bad_reply(llm, resources, job_id, body):
    llm.body = body

    err = await failure(script_task(job_id, prompt="Hi", endpoint=llm.url), resources)

    assert (err.type, err.non_retryable) == ("LlmBadReply", True)


async def test_ollama_down_is_unavailable_and_retryable(resources, job_id):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = dataclasses.replace(resources, settings=Settings(llm_endpoints=[endpoint]))

    err = await failure(script_task(job_id, prompt="Hi", endpoint=endpoint), res)

    assert (err.type, err.non_retryable) == ("LlmUnavailable", False)
    assert endpoint in err.message


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 7}, "prompt"),
        ({"prompt": "Hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "Hi", "temperature": True}, "temperature"),
        ({"prompt": "Hi", "timeoutMs": 0}, "timeoutMs"),
        ({"prompt": "Hi", "model": ""}, "model"),
        ({"prompt": "Hi", "endpoint": "localhost:11434"}, "endpoint"),
        ({"prompt": "Hi", "endpoint": "http://127.0.0.1:1/elsewhere"}, "endpoint"),
        ({"prompt": "Hi", "endpoint": "http://169.254.169.254"}, "endpoint"),
    ],
)
async def test_bad_params_fail_before_calling_ollama(llm, resources, job_id, params, field):
    sent_before = len(llm.requests)

    err = await failure(script_task(job_id, **params), resources)

    assert (err.type, err.non_retryable) == ("InvalidParams", True)
    assert f"{field}:" in err.message
    assert len(llm.requests) == sent_before


async def test_progress_steps_up_while_waiting_and_leaves_start_and_end_to_the_workflow(
    llm, resources, redis_client, job_id
):
    """Ticks while Ollama works, rising within the node's share; no message for the node's start or end, which the
    workflow's steps announce (a fast reply costs no publish at all)."""
    llm.delay = 1.3  # long enough for two ticks
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(resources.contracts.bridge.channel("progress", job_id))
    try:
        await generate_script(script_task(job_id, prompt="Tick", endpoint=llm.url), resources)
        values = [m["progress"] for m in await progress_messages(pubsub) if m["jobId"] == job_id]
        llm.delay = 0.0
        await generate_script(script_task(job_id, prompt="Fast", endpoint=llm.url), resources)
        after_a_fast_reply = await progress_messages(pubsub)
    finally:
        await pubsub.aclose()

    assert len(values) >= 2 and values == sorted(values)
    assert all(START < v < END for v in values), values
    assert after_a_fast_reply == []


async def progress_messages(pubsub, quiet: float = 0.3) -> list[dict]:
    """Progress payloads in arrival order, until none has come for `quiet` seconds."""
    messages: list[dict] = []
    clock = asyncio.get_running_loop().time
    until = clock() + quiet
    while (left := until - clock()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message:
            messages.append(json.loads(message["data"]))
            until = clock() + quiet
    return messages
