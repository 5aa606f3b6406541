"""core.payloads writes and reads exactly what Temporal's default converter does: the same bytes, the same objects,
the same refusals; histories and clients on either side keep working. (Its speed is bench/'s business.)"""

from __future__ import annotations

import json

import pytest
from temporalio.converter import DataConverter

from core.payloads import DATA_CONVERTER, PayloadConverter
from workflows.inputs import Handback, JobInput, JobSnapshot, NodeTask, Resumed, ServiceRuntime

DEFAULT = DataConverter.default.payload_converter
OURS = DATA_CONVERTER.payload_converter

GRAPH = {
    "schema": "myspinbot/graph@1",
    "workflowId": "2f1c3c9e-1d0e-4c55-8a3e-0c6f1f2b9a10",
    "context": {"pipeline": "sadtalker", "nested": [{"a": [1, 2.5, None, True]}, "é ✓"]},
    "nodes": [{"id": "script", "plane": "node", "status": "completed", "output": {"narration": "hi"}}],
    "edges": [{"from": "script", "to": "tts", "kind": "normal"}],
}
VALUES = [
    JobInput(
        GRAPH,
        {"llm.generate_script": ServiceRuntime("spinbot.activities", 30.0, max_attempts=5)},
        600,  # an int where a float is declared: the default converter turns it into a float on the way back
        attempt=2,
        python_timeouts={"generate.infinite_talk": -1.0},
        resumed=Resumed("running", 0.5, 3),
    ),
    JobInput(GRAPH, {}, 600.0),
    JobSnapshot("j", GRAPH, "running", 0.25, True, False, [{"nodeId": "script", "output": {}}], True, 17, False),
    NodeTask("j", "script", "llm.generate_script", {"prompt": "x"}, {"a": 1}, 0.1, 0.4),
    Handback(GRAPH),
    Handback({}, reason="the worker said so"),
    {"plain": "dict", "n": [1, 2]},
    None,
    "text",
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_ours_writes_the_default_converters_bytes_and_reads_back_its_objects(value):
    ours, theirs = OURS.to_payloads([value]), DEFAULT.to_payloads([value])
    assert ours == theirs
    hint = type(value) if value is not None else None
    read = OURS.from_payloads(ours, [hint] if hint else None)
    assert read == DEFAULT.from_payloads(theirs, [hint] if hint else None) == [value]
    assert [type(x) for x in read] == [type(x) for x in DEFAULT.from_payloads(theirs, [hint] if hint else None)]
    if isinstance(value, JobInput):  # nested dataclasses come back as dataclasses, numbers as declared
        (job,) = read
        assert isinstance(job.segment_timeout_seconds, float)
        assert all(isinstance(r, ServiceRuntime) for r in job.runtimes.values())
        assert job.resumed is None or isinstance(job.resumed, Resumed)


BROKEN = [
    (Handback, {"graph": "not a dict"}),
    (Handback, {"reason": "no graph"}),  # a required field missing
    (Handback, ["not", "an", "object"]),
    (JobSnapshot, {"job_id": "j", "graph": {}, "status": "running", "progress": "half"}),
    (JobInput, {"graph": {}, "runtimes": {"x": {"task_queue": 5}}, "segment_timeout_seconds": 1}),
    (JobInput, {"graph": {}, "runtimes": {}, "segment_timeout_seconds": 1, "resumed": {"status": "running"}}),
]


@pytest.mark.parametrize(("cls", "raw"), BROKEN, ids=lambda x: getattr(x, "__name__", None) or json.dumps(x)[:30])
def test_ours_refuses_what_the_default_converter_refuses(cls, raw):
    payloads = DEFAULT.to_payloads([raw])
    with pytest.raises(TypeError):
        DEFAULT.from_payloads(payloads, [cls])
    with pytest.raises(TypeError):
        OURS.from_payloads(payloads, [cls])


async def test_every_client_we_connect_uses_it(temporal_client):
    assert temporal_client.data_converter.payload_converter_class is PayloadConverter
