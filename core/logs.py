"""Structured logs: one JSON object a line when not on a terminal, readable text on one.

Every library (uvicorn, Temporal's SDK, redis, asyncpg) logs through the same root handler. Lifecycle
lines carry their ids as fields (`log_event(log, "job completed", job_id=...)`), so one job's story can
be read with a single filter. An expected failure (a node that failed for a reason it names) is one line:
its traceback is kept for debug level only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from temporalio.exceptions import ApplicationError


def log_event(logger: logging.Logger, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One lifecycle line with its ids (job_id, node_id, ...) as fields."""
    logger.log(level, message, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, fields appended as key=value."""

    def __init__(self, role: str):
        super().__init__(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", {})
        return line + "".join(f" {key}={value}" for key, value in fields.items()) if fields else line


class ExpectedFailuresQuiet(logging.Filter):
    """Above debug level: the SDK's own report of a failed activity attempt goes (ours says it, with the job),
    and a business failure (ApplicationError) keeps its message but not its chained traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG) or not record.exc_info:
            return True
        error = record.exc_info[1]
        expected = isinstance(error, ApplicationError) or isinstance(getattr(error, "cause", None), ApplicationError)
        if not expected:
            return True
        if record.name.startswith("temporalio.activity") and "Completing activity as failed" in record.getMessage():
            return False
        record.exc_info, record.exc_text = None, None
        return True


def setup_logging(role: str, fmt: str = "auto", level: int = logging.INFO) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter(role))
    handler.addFilter(ExpectedFailuresQuiet())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # through our handler, not uvicorn's own
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
