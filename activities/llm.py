"""llm.generate_script: asks Ollama for a stage prompt and a narration, reporting progress while it waits."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass
from typing import TypeGuard

import httpx
import redis.exceptions
from temporalio.exceptions import ApplicationError

from activities.resources import Resources
from core.settings import Settings
from workflows.inputs import NodeTask

log = logging.getLogger(__name__)

PROVIDER = "ollama"
PROGRESS_TICK_SECONDS = 0.5
# While waiting, progress creeps toward 90% of the node's span and never reaches it:
# only the reply may complete the node.
TICK_CEILING = 0.9
TICK_DECAY = 0.8


@dataclass(frozen=True)
class ScriptParams:
    """The node's params with the LLM settings filled in where they are absent (or null)."""

    prompt: str
    model: str
    temperature: float
    endpoint: str
    timeout_ms: float
    tone: str | None = None
    length: str | int | None = None
    persona: str | None = None

    @classmethod
    def from_params(cls, params: dict, settings: Settings) -> ScriptParams:
        def given(name, default=None):
            value = params.get(name)
            return default if value is None else value

        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise invalid_params("prompt: required, a non-empty string")
        model = given("model", settings.llm_model)
        if not isinstance(model, str) or not model:
            raise invalid_params(f"model: must be a non-empty string, got {model!r}")
        temperature = given("temperature", settings.llm_temperature)
        if not _is_number(temperature) or temperature < 0:
            raise invalid_params(f"temperature: must be a number >= 0, got {temperature!r}")
        endpoint = given("endpoint", settings.llm_endpoint)
        if not _is_http_url(endpoint):
            raise invalid_params(f"endpoint: must be an http(s) URL, got {endpoint!r}")
        if endpoint.rstrip("/") not in settings.llm_allowed_endpoints:
            # The planner refuses these too; this guards graphs planned under other settings.
            raise invalid_params(f"endpoint: {endpoint!r} is not an allowed LLM endpoint (SPINBOT_LLM_ENDPOINTS)")
        timeout_ms = given("timeoutMs", settings.llm_timeout_ms)
        if not _is_number(timeout_ms) or timeout_ms <= 0:
            raise invalid_params(f"timeoutMs: must be a number > 0, got {timeout_ms!r}")
        return cls(
            prompt.strip(),
            model,
            float(temperature),
            endpoint.rstrip("/"),
            timeout_ms,
            given("tone"),
            given("length"),
            given("persona"),
        )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_http_url(value) -> bool:
    try:
        url = httpx.URL(value)
    except (TypeError, httpx.InvalidURL):
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def invalid_params(problem: str) -> ApplicationError:
    return ApplicationError(f"llm.generate_script params: {problem}", type="InvalidParams", non_retryable=True)


def build_prompt(p: ScriptParams) -> str:
    """The instruction sent to the model: the user's request plus the JSON shape we parse."""
    lines = ["Write a short script for a talking-head video.", f"Request: {p.prompt}"]
    for label, value in (("Tone", p.tone), ("Length", p.length), ("Persona", p.persona)):
        if value not in (None, ""):
            lines.append(f"{label}: {value}")
    lines.append(
        'Reply with only a JSON object: {"stagePrompt": "<one sentence describing the scene and the speaker>", '
        '"narration": "<the words the speaker says>"}. No markdown, no commentary.'
    )
    return "\n".join(lines)


def parse_script(text: str) -> tuple[str, str]:
    """(stagePrompt, narration) from the reply: JSON, fenced JSON or JSON in prose; else first line and whole text."""
    for candidate in _json_objects(text):
        stage, narration = _text_field(candidate, "stagePrompt"), _text_field(candidate, "narration")
        if stage or narration:
            return stage or _first_line(narration), narration or stage
    return _first_line(text), text.strip()


def _json_objects(text: str):
    """Every JSON object that starts at some '{' in the text, outermost first; covers bare, fenced and embedded JSON."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            yield decoder.raw_decode(text, start)[0]
        except ValueError:
            pass
        start = text.find("{", start + 1)


def _text_field(candidate, name: str) -> str:
    value = candidate.get(name) if isinstance(candidate, dict) else None
    return value.strip() if isinstance(value, str) else ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


async def _report_progress(res: Resources, job_id: str, value: float) -> None:
    # Progress is advisory (the node's output carries currentProgress), so a Redis hiccup must not fail the script.
    try:
        await res.publish_progress(job_id, value)
    except redis.exceptions.RedisError as exc:
        log.warning("progress for job %s not published: %s", job_id, exc)


async def _tick_progress(res: Resources, task: NodeTask, stop: asyncio.Event) -> None:
    """Creep toward progress_end every tick until `stop` is set, so clients see a long generation is alive. The
    node's start and end need no message of their own: the workflow's steps announce both (progress_start before
    this activity is scheduled, progress_end as soon as it completes). One task publishes every tick, in order."""
    span = task.progress_end - task.progress_start
    if span <= 0:
        return
    for step in itertools.count(1):
        try:
            async with asyncio.timeout(PROGRESS_TICK_SECONDS):
                await stop.wait()
            return
        except TimeoutError:
            await _report_progress(res, task.job_id, task.progress_start + span * TICK_CEILING * (1 - TICK_DECAY**step))


async def _ask_ollama(http: httpx.AsyncClient, p: ScriptParams) -> dict:
    """POST /api/generate and return Ollama's JSON reply; every failure becomes an ApplicationError."""
    body = {
        "model": p.model,
        "prompt": build_prompt(p),
        "temperature": p.temperature,
        "stream": False,
        "options": {"temperature": p.temperature},
    }
    seconds = p.timeout_ms / 1000
    try:
        # httpx's timeout bounds each phase; the outer one bounds the whole exchange.
        async with asyncio.timeout(seconds):
            response = await http.post(f"{p.endpoint}/api/generate", json=body, timeout=seconds)
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise ApplicationError(
            f"Ollama at {p.endpoint} did not answer within {p.timeout_ms:g} ms", type="LlmTimeout"
        ) from exc
    except httpx.TransportError as exc:
        raise ApplicationError(
            f"Ollama at {p.endpoint} is unreachable: {exc or type(exc).__name__}", type="LlmUnavailable"
        ) from exc
    if response.status_code >= 400:
        detail = _error_text(response)
        if response.status_code < 500:
            raise ApplicationError(
                f"Ollama at {p.endpoint} rejected the request (HTTP {response.status_code}): {detail}",
                type="LlmRejected",
                non_retryable=True,
            )
        raise ApplicationError(
            f"Ollama at {p.endpoint} failed (HTTP {response.status_code}): {detail}", type="LlmServerError"
        )
    try:
        reply = response.json()
    except ValueError as exc:
        raise ApplicationError(
            f"Ollama at {p.endpoint} answered with a body that is not JSON: {response.text[:200]!r}",
            type="LlmBadReply",
            non_retryable=True,
        ) from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("response"), str):
        raise ApplicationError(
            f"Ollama at {p.endpoint} answered without a `response` text: {response.text[:200]!r}",
            type="LlmBadReply",
            non_retryable=True,
        )
    return reply


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _tokens_used(reply: dict) -> int:
    counts = (reply.get("eval_count"), reply.get("prompt_eval_count"))
    return int(sum(count for count in counts if _is_number(count)))


async def generate_script(task: NodeTask, res: Resources) -> dict:
    """Write a stage prompt and a narration for the job's video with Ollama."""
    p = ScriptParams.from_params(task.params or {}, res.settings)
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(_tick_progress(res, task, stop_ticking))
    try:
        reply = await _ask_ollama(res.http, p)
    finally:
        # Stop rather than cancel, and wait: no tick is cut off mid-publish, and none follows the workflow's
        # announcement of progress_end, which comes once this activity has returned.
        stop_ticking.set()
        await ticker
    text = reply["response"]
    if not text.strip():
        # Sampling again may well produce text, so let Temporal retry.
        raise ApplicationError(
            f"Ollama at {p.endpoint} returned an empty response for model {p.model}", type="LlmEmptyReply"
        )
    stage_prompt, narration = parse_script(text)
    return {
        "stagePrompt": stage_prompt,
        "narration": narration,
        "tokensUsed": _tokens_used(reply),
        "model": p.model,
        "temperature": p.temperature,
        "provider": PROVIDER,
        "currentProgress": task.progress_end,
    }
