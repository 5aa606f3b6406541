"""The two timestamp forms on the wire: milliseconds since epoch as a string, and ISO-8601 UTC with a Z."""

import time
from datetime import UTC, datetime


def now_ms() -> str:
    return str(int(time.time() * 1000))


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
