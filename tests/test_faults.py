"""Fault injection on a deployment of real processes (issue 9, item 10): one round of jobs per fault.

Faults: kill -9 of the API mid-burst of POSTs, of the workflow worker, of the LLM activity worker with calls in
flight, of a relay holding a handback, of the data-plane worker holding entries; Temporal (kill -9) and Redis
(kill -9) restarted with jobs in flight, PostgreSQL stopped and started. A killed role is restarted at once on
the same arguments (a supervisor's job in production). One deployment serves every round: one replica of each
role, except the relay, which has a survivor (pub/sub keeps nothing for absent listeners: with no relay at all,
messages are lost by design, not by fault). Its own Temporal (SQLite), Redis (AOF) and PostgreSQL restart in place.

For each round, measured after every job has ended (or the round's deadline passed):

- jobs completed (workflow completed, `jobs` row and Redis keys say completed with progress 1), failed, stuck
  (still running at the deadline), lost (no workflow for an id the client was given or retried with its key),
  wrong record (workflow completed, row or keys say otherwise);
- duplicate events: job_events rows recording one event twice. The sadtalker job publishes `advertised` (API),
  `running` and `completed` (workflow), the script node's output (workflow), and per run of its one python
  segment a `running` plus one output per python node (data plane). A duplicate is a second `advertised`, a
  second `completed`, any `failed`, a second script output, more `running` rows than 1 + the segment's runs, or
  more outputs of a python node than the segment's runs;
- workflow events missing: a completed job without its `running`, `completed` or script-output row (the
  API's `advertised` is pub/sub only: when no relay hears it, it is lost; counted apart, in the details);
- segment runs come from the data-plane workers' own logs (the simulator's line for the segment's first node;
  each incarnation logs to its own file), pushes and handbacks from process:data and process:control. A segment
  runs twice when it was pushed twice, handed back twice, or run again while no earlier run died with a killed
  worker; a segment run again after its worker was killed holding it is a legitimate takeover, counted as
  're-run after crash'. A handback is applied at most once: the workflow accepts only its open segment's and
  then closes it, so a second application needs a second push, which 'pushed twice' would show; handback signals
  repeated by a relay (and ignored by the workflow) are counted from the workflow histories;
- orphans: `jobs` rows with no workflow, workflows with no row (the whole deployment, every round so far);
- recovery: from the fault to the close of the round's last job (Temporal's close time).

The table is printed (-s) and written to <basetemp>/fault-table.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.service import RPCError, RPCStatusCode

from api.jobs import IDEMPOTENCY_NAMESPACE
from config import CONFIG_DIR
from tests.cluster import (
    ACTIVITY_QUEUES,
    BRIDGE,
    SADTALKER,
    Deployment,
    pending_of,
    production,
    ready,
    stopped_holding,
    tails,
)
from workflows.inputs import Handback
from workflows.names import HANDBACK
from workflows.segments import tag_of

pytestmark = pytest.mark.timeout(150)

HISTORIES = Path(__file__).parent / "histories"

JOBS = 5  # per round
ROUND_SECONDS = 60  # from the fault, for every job of the round to end (the LLM worker's heartbeat timeout is 20 s)
LLM_QUEUE = next(q for q in ACTIVITY_QUEUES if q.endswith(".llm"))
REPLICAS = {"api": 1, "workflow-worker": 1, **{f"activity-worker[{q}]": 1 for q in ACTIVITY_QUEUES}, "relay": 2}
REPLICAS["dataplane"] = 1
SIMULATING = re.compile(r"^SIMULATING \S+ for job (\S+) node (\S+) ")


def _first_python_node(variant: str) -> str:
    """The node that opens the pipeline's one python segment (the simulator logs it once per run of the segment)."""
    pipeline = json.loads((CONFIG_DIR / "pipelines.json").read_text())["pipelines"][variant]
    plane = {node["id"]: node["plane"] for node in pipeline["nodes"]}
    [first] = [e["to"] for e in pipeline["edges"] if plane[e["to"]] == "python" and plane[e["from"]] == "node"]
    return first


FIRST_PYTHON = _first_python_node(SADTALKER["variant"])
NODE_PLANE = "script"


def job_id_for(key: str) -> str:
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))


@dataclass
class Round:
    fault: str
    keys: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # job ids whose first POST was answered 200
    fault_at: float = 0.0  # time.time() of the fault
    in_flight: int = 0  # jobs of the round not finished when the fault landed
    held: int = 0  # entries the killed relay / data plane held

    @property
    def job_ids(self) -> list[str]:
        return [job_id_for(key) for key in self.keys]


@dataclass
class Row:
    fault: str
    jobs: int
    completed: int
    failed: int
    stuck: int
    lost: int
    wrong_record: int
    duplicate_events: int
    events_missing: int
    segments_run_twice: int
    rerun_after_crash: int
    handbacks_signalled_twice: int
    orphans: int
    recovery_s: float
    in_flight: int
    details: dict = field(default_factory=dict)


COLUMNS = [
    ("fault", "fault"),
    ("jobs", "jobs"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("stuck", "stuck"),
    ("lost", "lost"),
    ("wrong_record", "wrong record"),
    ("duplicate_events", "duplicate events"),
    ("events_missing", "workflow events missing"),
    ("segments_run_twice", "segments run twice"),
    ("rerun_after_crash", "re-run after crash"),
    ("handbacks_signalled_twice", "handbacks signalled twice (ignored)"),
    ("orphans", "orphans"),
    ("recovery_s", "recovery s"),
]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = asdict(row)
        lines.append("| " + " | ".join(_cell(values[name]) for name, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


@dataclass
class Suite:
    deployment: Deployment
    rows: list[Row] = field(default_factory=list)
    held_by_killed: Counter = field(default_factory=Counter)  # job -> times a killed data-plane worker held it

    @property
    def database_url(self) -> str:
        assert self.deployment.services.postgres is not None
        return self.deployment.services.postgres.url


@pytest.fixture(scope="module")
async def suite(tmp_path_factory, s3_endpoint, ollama):
    base = tmp_path_factory.mktemp("faults")
    started = time.monotonic()
    # Pushes and handbacks are counted from the streams: none is trimmed while the suite runs.
    keep = {"SPINBOT_STREAM_RETENTION_SECONDS": "3600"}
    async with production(base, None, s3_endpoint, ollama.url, 0.2, REPLICAS, extra_env=keep) as deployment:
        await ready(deployment)
        running = Suite(deployment)
        print(f"\nfault suite: deployment ready in {time.monotonic() - started:.1f}s ({base})")
        try:
            yield running
        finally:
            table = markdown(running.rows)
            path = tmp_path_factory.getbasetemp() / "fault-table.md"
            path.write_text(f"# Fault table\n\n{table}")
            print(f"\nfault table ({time.monotonic() - started:.1f}s with start-up; {path}):\n{table}")


# --- submitting ---------------------------------------------------------------------------------------------


async def post(http: httpx.AsyncClient, key: str) -> int | None:
    request = {**SADTALKER, "params": {"script": {"prompt": f"fault round {key}"}}}
    try:
        reply = await http.post("/api/jobs", json=request, headers={"Idempotency-Key": key})
    except httpx.HTTPError:
        return None  # the server died under this request, or is not back yet
    if reply.status_code == 200:
        assert reply.json()["jobId"] == job_id_for(key), reply.text
    return reply.status_code


async def submit(deployment: Deployment, round_: Round, count: int, spacing: float = 0.2) -> None:
    async with httpx.AsyncClient(base_url=deployment.api_url(), timeout=15) as http:
        for _ in range(count):
            key = f"{round_.fault}-{uuid.uuid4()}"
            assert await post(http, key) == 200
            round_.keys.append(key)
            round_.answered.add(job_id_for(key))
            await asyncio.sleep(spacing)


async def accepted_eventually(http: httpx.AsyncClient, key: str, timeout: float = 30) -> None:
    """What a client does when its POST got no answer: the same request with the same key until one comes."""
    deadline = time.monotonic() + timeout
    while (code := await post(http, key)) != 200:
        assert time.monotonic() < deadline, f"POST with key {key} never answered 200 (last: {code})"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def feeding(deployment: Deployment, round_: Round, most: int = 12, spacing: float = 0.3):
    """Jobs keep coming (up to `most`) while the body waits for the moment to strike."""

    async def feed() -> None:
        await submit(deployment, round_, most, spacing)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if len(round_.keys) < JOBS:  # struck early: the round still has its jobs, after the fault
        await submit(deployment, round_, JOBS - len(round_.keys), spacing)


# --- faults -------------------------------------------------------------------------------------------------


async def api_mid_burst(suite: Suite, llm) -> Round:
    """A burst of POSTs, the API killed as the first is answered. On a busy machine the rest can all be answered
    before the kill lands; such a strike hit nothing, and is made again (its jobs run to the end regardless)."""
    for _ in range(3):
        round_ = await _strike_api_mid_burst(suite, llm)
        if round_.in_flight:
            break
        await ready(suite.deployment)  # the restarted API, before the next strike
    return round_


async def _strike_api_mid_burst(suite: Suite, llm) -> Round:
    deployment, round_ = suite.deployment, Round("kill -9 API mid-burst")
    llm.delay = 0.3
    round_.keys = [f"api-burst-{uuid.uuid4()}" for _ in range(JOBS + 1)]
    async with httpx.AsyncClient(base_url=deployment.api_url(), timeout=15) as http:
        posts = [asyncio.create_task(post(http, key)) for key in round_.keys]
        await asyncio.wait(posts, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        round_.fault_at = time.time()
        deployment.kill("api")
        deployment.restart("api")
        codes = await asyncio.gather(*posts)
        round_.in_flight = sum(code != 200 for code in codes)
        round_.answered = {job_id_for(k) for k, code in zip(round_.keys, codes, strict=True) if code == 200}
        await asyncio.gather(
            *(accepted_eventually(http, k) for k, code in zip(round_.keys, codes, strict=True) if code != 200)
        )
    return round_


async def kill_role(suite: Suite, round_: Round, kind: str) -> None:
    round_.in_flight = await unfinished(suite.deployment, round_.job_ids)
    round_.fault_at = time.time()
    suite.deployment.kill(kind)
    suite.deployment.restart(kind)


async def workflow_worker(suite: Suite, llm) -> Round:
    round_ = Round("kill -9 workflow worker")
    llm.delay = 1.0  # at the kill, some jobs wait on the LLM, the first ones are in their segment
    await submit(suite.deployment, round_, JOBS, spacing=0.3)
    await kill_role(suite, round_, "workflow-worker")
    return round_


async def workflow_worker_mid_sync(suite: Suite, llm) -> Round:
    """The worker dies while its persistence steps wait on PostgreSQL (their Redis side already done): the steps
    run again on the next worker, in a new workflow task."""
    deployment, round_ = suite.deployment, Round("kill -9 workflow worker mid-sync (PostgreSQL down)")
    llm.delay = 0.5
    await submit(deployment, round_, JOBS, spacing=0.15)
    deployment.services.stop_postgres()
    await asyncio.sleep(1.5)
    await kill_role(suite, round_, "workflow-worker")
    await asyncio.sleep(1.5)
    await asyncio.to_thread(deployment.services.start_postgres)
    return round_


async def activity_worker(suite: Suite, llm) -> Round:
    round_ = Round("kill -9 activity worker (LLM calls in flight)")
    llm.delay = 1.5
    requests_before, answers_before = len(llm.requests), len(llm.spans)
    await submit(suite.deployment, round_, JOBS, spacing=0.1)

    async def calls_in_flight() -> bool:  # the peer notes a request when it arrives, a span when it answers
        return (len(llm.requests) - requests_before) - (len(llm.spans) - answers_before) >= 2

    await wait(calls_in_flight, "LLM calls in flight")
    await kill_role(suite, round_, f"activity-worker[{LLM_QUEUE}]")
    return round_


async def relay_holding(suite: Suite, llm) -> Round:
    deployment, round_ = suite.deployment, Round("kill -9 relay holding a handback")
    llm.delay = 0.2
    async with feeding(deployment, round_):
        # A relay frozen while blocked in XREADGROUP is still handed the next handback by Redis.
        round_.held = await stopped_holding(deployment, "relay", 0, timeout=30, before_each=0.8)
        await kill_role(suite, round_, "relay")
    return round_


async def dataplane_holding(suite: Suite, llm) -> Round:
    deployment, round_ = suite.deployment, Round("kill -9 data-plane worker holding entries")
    llm.delay = 0.2
    async with feeding(deployment, round_):
        # Frozen a moment after it took an entry: mid-segment (3 nodes of 0.2 s), its first node started.
        round_.held = await stopped_holding(deployment, "dataplane", 0, timeout=30, after=0.15)
        suite.held_by_killed.update(await held_jobs(deployment))
        await kill_role(suite, round_, "dataplane")
    return round_


async def service_restart(suite: Suite, llm, name: str, down: float) -> Round:
    services = suite.deployment.services
    stop, start = {
        "temporal": (services.kill_temporal, services.start_temporal),
        "redis": (services.kill_redis, services.start_redis),
        "postgres": (services.stop_postgres, services.start_postgres),
    }[name]
    how = "stopped" if name == "postgres" else "killed -9"
    round_ = Round(f"{name} restart ({how}, {down:g}s down)")
    llm.delay = 0.5
    await submit(suite.deployment, round_, JOBS, spacing=0.15)
    round_.in_flight = await unfinished(suite.deployment, round_.job_ids)
    round_.fault_at = time.time()
    stop()
    await asyncio.sleep(down)
    await asyncio.to_thread(start)
    return round_


FAULTS: dict[str, Callable[[Suite, object], Awaitable[Round]]] = {
    "api": api_mid_burst,
    "workflow-worker": workflow_worker,
    "workflow-worker-mid-sync": workflow_worker_mid_sync,
    "activity-worker": activity_worker,
    "relay": relay_holding,
    "dataplane": dataplane_holding,
    "temporal": lambda suite, llm: service_restart(suite, llm, "temporal", 2.0),
    "redis": lambda suite, llm: service_restart(suite, llm, "redis", 2.0),
    "postgres": lambda suite, llm: service_restart(suite, llm, "postgres", 3.0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault(suite: Suite, llm, fault: str):
    await ready(suite.deployment)  # what the previous round restarted serves again
    round_ = await FAULTS[fault](suite, llm)
    row = await measure(suite, round_)
    suite.rows.append(row)
    early: list[str] = []
    if fault == "workflow-worker-mid-sync":
        early = [j for j in round_.job_ids if await kept_an_early_handback(suite.deployment, j)]
        row.details["handbacks kept for a reopened segment"] = len(early)
        if early and os.environ.get("SPINBOT_RECORD_HISTORIES"):  # a replay guard of that path (tests/histories)
            history = await suite.deployment.temporal.get_workflow_handle(early[0]).fetch_history()
            (HISTORIES / "early_handback_after_worker_crash.json").write_text(history.to_json())
    print(f"\n{row.fault}: {json.dumps(asdict(row), default=str)}")
    problems = {
        "every job completed, recorded so": row.completed == row.jobs,
        "none failed, stuck, lost or wrongly recorded": row.failed == row.stuck == row.lost == row.wrong_record == 0,
        "no event recorded twice": row.duplicate_events == 0,
        "none of the workflow's events missing": row.events_missing == 0,
        "no segment run twice": row.segments_run_twice == 0,
        "no orphan": row.orphans == 0,
        "the fault hit work in flight": row.in_flight > 0,
    }
    if fault in ("relay", "dataplane"):
        problems["the killed replica held work"] = round_.held > 0
    if fault == "dataplane":
        problems["a segment the killed worker was running ran again elsewhere"] = row.rerun_after_crash > 0
    if fault == "workflow-worker-mid-sync":
        problems["a handback reached a re-run step before it reopened its segment"] = bool(early)
    failed = [what for what, ok in problems.items() if not ok]
    assert not failed, (failed, row, tails(suite.deployment.logs, 1500))


# --- measuring ----------------------------------------------------------------------------------------------


async def wait(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def describe(deployment: Deployment, job_id: str) -> tuple[str, float | None]:
    """(workflow status name or 'lost' or 'unreachable', close time as epoch seconds)."""
    try:
        description = await deployment.temporal.get_workflow_handle(job_id).describe()
    except RPCError as exc:
        return ("lost" if exc.status == RPCStatusCode.NOT_FOUND else "unreachable"), None
    status = description.status.name if description.status else "UNKNOWN"
    return status, description.close_time.timestamp() if description.close_time else None


async def unfinished(deployment: Deployment, job_ids: list[str]) -> int:
    states = await asyncio.gather(*(describe(deployment, job_id) for job_id in job_ids))
    return sum(status in ("RUNNING", "unreachable") for status, _ in states)


async def settle(deployment: Deployment, job_ids: list[str], fault_at: float) -> dict[str, tuple[str, float | None]]:
    deadline = fault_at + ROUND_SECONDS
    while True:
        states = dict(zip(job_ids, await asyncio.gather(*(describe(deployment, j) for j in job_ids)), strict=True))
        if all(status not in ("RUNNING", "unreachable") for status, _ in states.values()) or time.time() > deadline:
            return states
        await asyncio.sleep(0.25)


async def fetch(database_url: str, query: str, *args) -> list[asyncpg.Record]:
    """A connection of its own per read: PostgreSQL may have been restarted under any pool."""
    for attempt in range(50):
        try:
            conn = await asyncpg.connect(database_url, timeout=5)
            break
        except (OSError, asyncpg.PostgresError):
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def _event_data(raw) -> dict | None:
    value = json.loads(raw) if isinstance(raw, str) else raw
    value = json.loads(value) if isinstance(value, str) else value
    return value if isinstance(value, dict) else None


async def events_of(suite: Suite, job_ids: list[str], pushed_ms: dict[str, int] | None = None) -> dict[str, Counter]:
    """Per job: status rows by status, and output rows by node ('data:<node>').

    `running` rows are split by the time of the job's segment push (`pushed_ms`): the workflow's own comes first
    (its first step, before the LLM wrote the script), each data-plane run's after it ('running:data-plane')."""
    rows = await fetch(
        suite.database_url,
        """SELECT job_id::text AS job_id, status, data::text AS data, created FROM job_events
           WHERE job_id = ANY($1::uuid[])""",
        [uuid.UUID(job_id) for job_id in job_ids],
    )
    counts: dict[str, Counter] = {job_id: Counter() for job_id in job_ids}
    for row in rows:
        job_id, status = row["job_id"], row["status"]
        pushed = (pushed_ms or {}).get(job_id)
        if status == "running" and pushed is not None and row["created"].timestamp() * 1000 >= pushed:
            counts[job_id]["running:data-plane"] += 1
        elif status:
            counts[job_id][status] += 1
        elif row["data"] and (data := _event_data(row["data"])) and "nodeId" in data:
            counts[job_id][f"data:{data['nodeId']}"] += 1
    return counts


async def first_push_ms(deployment: Deployment) -> dict[str, int]:
    """Per job, when its first segment entry was added to process:data (the entry id's milliseconds)."""
    first: dict[str, int] = {}
    entries: Any = await deployment.redis.xrange(BRIDGE.data_stream)
    for entry_id, fields in entries:
        first.setdefault(str(fields["jobId"]), int(str(entry_id).split("-")[0]))
    return first


def _decoded(payloads: Any) -> Any:
    return json.loads(payloads.payloads[0].data or b"null") if payloads.payloads else None


async def kept_an_early_handback(deployment: Deployment, job_id: str) -> bool:
    """Whether the job's workflow took the path that keeps a handback until its re-run step reopens the segment: the
    handback of a segment is recorded before the step that pushed it (a re-run, after the crash lost the first)."""
    handed_back: list[object] = []  # the segment tags signalled so far
    async for event in deployment.temporal.get_workflow_handle(job_id).fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            signal = event.workflow_execution_signaled_event_attributes
            if signal.signal_name == HANDBACK:
                handed_back.append(tag_of(Handback(_decoded(signal.input)["graph"])))
        elif handed_back and event.HasField("marker_recorded_event_attributes"):
            details = event.marker_recorded_event_attributes.details
            outcome = _decoded(details["result"]) if "result" in details else None
            if isinstance(outcome, dict) and (outcome.get("push") or {}).get("segment") in handed_back:
                return True
    return False


async def held_jobs(deployment: Deployment, index: int = 0) -> list[str]:
    """The jobs whose process:data entries data-plane replica `index` holds (read, not acked)."""
    pid = str(deployment.roles["dataplane"][index].pid)
    consumers = await deployment.redis.xinfo_consumers(BRIDGE.data_stream, BRIDGE.workers_group)
    [name] = [c["name"] for c in consumers if c["name"].rsplit("-", 1)[-1] == pid]
    rows = await deployment.redis.xpending_range(BRIDGE.data_stream, BRIDGE.workers_group, "-", "+", 100, name)
    jobs = []
    for row in rows:
        entries: Any = await deployment.redis.xrange(BRIDGE.data_stream, row["message_id"], row["message_id"])
        jobs += [str(fields["jobId"]) for _, fields in entries]
    return jobs


def segment_runs(deployment: Deployment) -> dict[str, list[Path]]:
    """Per job, the data-plane log (one per incarnation) of each run of its python segment that reached its
    first node (a run killed before that announced itself with `running` only)."""
    runs: dict[str, list[Path]] = {}
    for log in deployment.logs_of("dataplane"):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found = SIMULATING.match(json.loads(line).get("msg", ""))
                if found and found.group(2) == FIRST_PYTHON:
                    runs.setdefault(found.group(1), []).append(log)
    return runs


async def stream_tags(deployment: Deployment, stream: str) -> dict[str, Counter]:
    """Per job, how many entries of `stream` carry each segment tag (metadata.handoff)."""
    tags: dict[str, Counter] = {}
    entries: Any = await deployment.redis.xrange(stream)
    for _, fields in entries:
        graph = json.loads(fields["graph"])
        tag = json.dumps((graph.get("metadata") or {}).get("handoff"), sort_keys=True)
        tags.setdefault(str(fields["jobId"]), Counter())[tag] += 1
    return tags


async def handback_signals(deployment: Deployment, job_id: str) -> Counter:
    """The handback signals a job's workflow received (all its runs), by segment tag."""
    tags: Counter = Counter()
    handle = deployment.temporal.get_workflow_handle(job_id)
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            signal = event.workflow_execution_signaled_event_attributes
            if signal.signal_name == HANDBACK:
                handback = json.loads(signal.input.payloads[0].data)
                tags[json.dumps((handback["graph"].get("metadata") or {}).get("handoff"), sort_keys=True)] += 1
    return tags


async def orphans(suite: Suite) -> list[str]:
    deployment = suite.deployment
    rows = {r["job_id"] for r in await fetch(suite.database_url, "SELECT job_id::text AS job_id FROM jobs")}
    workflows = {wf.id async for wf in deployment.temporal.list_workflows()}
    found = [f"row without workflow: {job_id}" for job_id in sorted(rows - workflows)]
    # Visibility may lag: a row missing from the list is looked up directly before it counts.
    for job_id in sorted(rows - workflows):
        if (await describe(deployment, job_id))[0] != "lost":
            found.remove(f"row without workflow: {job_id}")
    return found + [f"workflow without row: {job_id}" for job_id in sorted(workflows - rows)]


async def measure(suite: Suite, round_: Round) -> Row:
    deployment, job_ids = suite.deployment, round_.job_ids
    states = await settle(deployment, job_ids, round_.fault_at)
    completed = [j for j, (status, _) in states.items() if status == "COMPLETED"]

    async def recorded() -> bool:  # the relays record the ending a moment after it
        counts = await events_of(suite, completed)
        return all(counts[j]["completed"] for j in completed)

    with contextlib.suppress(AssertionError):
        await wait(recorded, "every ending recorded in job_events", timeout=5)
    records = {
        r["job_id"]: (r["status"], r["progress"])
        for r in await fetch(
            suite.database_url,
            "SELECT job_id::text AS job_id, status, progress FROM jobs WHERE job_id = ANY($1::uuid[])",
            [uuid.UUID(j) for j in job_ids],
        )
    }
    keys = {}
    for j in job_ids:
        keys[j] = tuple(await deployment.redis.mget(BRIDGE.status_key(j), BRIDGE.progress_key(j)))
    right = {
        j
        for j in completed
        if records.get(j) == ("completed", 1.0) and keys[j][0] == "completed" and float(keys[j][1] or 0) == 1.0
    }

    events = await events_of(suite, job_ids, await first_push_ms(deployment))
    runs = segment_runs(deployment)
    pushes = await stream_tags(deployment, BRIDGE.data_stream)
    handbacks = await stream_tags(deployment, BRIDGE.control_stream)
    duplicates: dict[str, dict] = {}
    missing: dict[str, list[str]] = {}
    advertised_missing: list[str] = []  # the API's announcement: pub/sub only, lost when no relay hears it
    twice: dict[str, dict] = {}
    rerun: list[str] = []
    signalled_twice: dict[str, dict] = {}
    for j in job_ids:
        count, job_runs = events[j], runs.get(j, [])
        # Each run of the segment announces itself (`running`) before its first node: a run killed before it
        # reached that node is in the events only; one whose announcement was lost (Redis down) in the logs only.
        n_runs = max(len(job_runs), count["running:data-plane"])
        excess = {
            "advertised": count["advertised"] - 1,
            "completed": count["completed"] - 1,
            "failed": count["failed"],
            "running": count["running"] - 1,
            f"data:{NODE_PLANE}": count[f"data:{NODE_PLANE}"] - 1,
            **{k: v - n_runs for k, v in count.items() if k.startswith("data:") and k != f"data:{NODE_PLANE}"},
        }
        if over := {k: v for k, v in excess.items() if v > 0}:
            duplicates[j] = over
        if j in completed:
            if absent := [name for name in ("running", "completed", f"data:{NODE_PLANE}") if not count[name]]:
                missing[j] = absent
            if j in round_.answered and not count["advertised"]:
                advertised_missing.append(j)
        pushed, handed = pushes.get(j, Counter()), handbacks.get(j, Counter())
        # Run again legitimately: once per time a killed worker held the segment, and handed back once in all.
        legit_rerun = 1 < n_runs <= 1 + suite.held_by_killed[j] and sum(handed.values()) <= 1
        if sum(pushed.values()) > 1 or any(n > 1 for n in handed.values()) or (n_runs > 1 and not legit_rerun):
            twice[j] = {"pushed": dict(pushed), "handed back": dict(handed), "runs": n_runs, "logs": len(job_runs)}
        if legit_rerun:
            rerun.append(j)
        signals = await handback_signals(deployment, j) if states[j][0] != "lost" else Counter()
        if any(n > 1 for n in signals.values()):
            signalled_twice[j] = dict(signals)

    closed = [closed_at for _, closed_at in states.values() if closed_at]
    found_orphans = await orphans(suite)
    statuses = Counter(status for status, _ in states.values())
    return Row(
        fault=round_.fault,
        jobs=len(job_ids),
        completed=len(right),
        failed=sum(
            n for status, n in statuses.items() if status not in ("COMPLETED", "RUNNING", "lost", "unreachable")
        ),
        stuck=statuses["RUNNING"] + statuses["unreachable"],
        lost=statuses["lost"],
        wrong_record=len(completed) - len(right),
        duplicate_events=sum(sum(over.values()) for over in duplicates.values()),
        events_missing=sum(len(absent) for absent in missing.values()),
        segments_run_twice=len(twice),
        rerun_after_crash=len(rerun),
        handbacks_signalled_twice=len(signalled_twice),
        orphans=len(found_orphans),
        recovery_s=round(max(closed) - round_.fault_at, 1) if closed else float("nan"),
        in_flight=round_.in_flight,
        details={
            "held": round_.held,
            "states": {j: s for j, (s, _) in states.items() if s != "COMPLETED"},
            "wrong": {j: (records.get(j), keys[j]) for j in completed if j not in right},
            "duplicates": duplicates,
            "missing": missing,
            "advertised missing": advertised_missing,
            "run twice": twice,
            "signalled twice": signalled_twice,
            "orphans": found_orphans,
            "pending": {k: await pending_of(deployment, k, 0) for k in ("relay", "dataplane")},
        },
    )
