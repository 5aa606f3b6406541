"""The CLI's view of the API: REST calls over HTTP and the WebSocket feed, every failure one clear CliError."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Generator
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from spinbot.cli_errors import EXIT_BAD_REQUEST, EXIT_FAILED, CliError

PAGE = 100
MAX_PAGES = 50  # a prefix is looked up among the newest 5,000 jobs
JOB_PREFIX = re.compile(r"^[0-9a-fA-F-]{1,36}$")


class SpinbotClient:
    def __init__(self, api: str, api_key: str | None = None, timeout: float = 30.0):
        self.api = api.rstrip("/")
        self.api_key = api_key or None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            self.http = httpx.Client(base_url=self.api, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"--api {api!r} is not a usable URL: {exc}", EXIT_BAD_REQUEST) from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SpinbotClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        """The JSON reply, or a CliError naming what went wrong (the API's own {error} message when it sent one)."""
        try:
            reply = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise CliError(f"the API at {self.api} did not answer {method} {path} in time") from None
        except (httpx.HTTPError, OSError) as exc:
            raise CliError(f"cannot reach the API at {self.api}: {exc or type(exc).__name__}") from None
        if reply.is_success:
            try:
                return reply.json()
            except ValueError:
                raise CliError(f"{method} {path}: the API answered {reply.status_code} without JSON") from None
        try:
            message = reply.json().get("error") or reply.text
        except (ValueError, AttributeError):
            message = reply.text[:200] or reply.reason_phrase
        code = EXIT_BAD_REQUEST if 400 <= reply.status_code < 500 else EXIT_FAILED
        raise CliError(f"{method} {path}: {reply.status_code} {message}", code)

    # --- REST ------------------------------------------------------------------------------------

    def submit(self, planning_request: dict) -> dict:
        return self.request("POST", "/api/jobs", json=planning_request)

    def jobs(self, **filters: Any) -> dict:
        params = {name: value for name, value in filters.items() if value is not None}
        return self.request("GET", "/api/jobs", params=params)

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}")

    def live_graph(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}/graph")

    def status(self, job_id: str) -> dict:
        return self.request("GET", f"/api/status/{job_id}")

    def artifacts(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}/artifacts")

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/api/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict:
        return self.request("POST", f"/api/jobs/{job_id}/retry")

    def capabilities(self) -> dict:
        return self.request("GET", "/api/capabilities")

    def pipelines(self) -> dict:
        return self.request("GET", "/api/pipelines")

    def resolve(self, prefix: str) -> str:
        """The job id that `prefix` starts; a full id is taken as it is."""
        prefix = prefix.strip().lower()
        if _is_uuid(prefix):
            return prefix
        if not JOB_PREFIX.match(prefix):
            raise CliError(f"{prefix!r} is not a job id or the start of one", EXIT_BAD_REQUEST)
        matches: list[str] = []
        for page in range(MAX_PAGES):
            body = self.jobs(limit=PAGE, offset=page * PAGE, include="capabilities")
            matches += [job["jobId"] for job in body["jobs"] if job["jobId"].startswith(prefix)]
            if len(body["jobs"]) < PAGE:
                break
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CliError(f"no job id starts with {prefix!r}", EXIT_BAD_REQUEST)
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise CliError(f"{prefix!r} is ambiguous: {len(matches)} jobs start with it ({shown})", EXIT_BAD_REQUEST)

    # --- WebSocket -------------------------------------------------------------------------------

    def updates(self, job_id: str, idle_timeout: float = 60.0) -> Generator[dict, None, None]:
        """Updates of one job from /ws, starting with its current state; ends when the socket does."""
        url = self.api.replace("http", "ws", 1) + "/ws"
        if self.api_key:
            url += "?" + urlencode({"key": self.api_key})
        try:
            with connect(url, open_timeout=10, close_timeout=2) as socket:
                socket.send(json.dumps({"action": "subscribe", "jobId": job_id}))
                while True:
                    message = json.loads(socket.recv(timeout=idle_timeout))
                    if message.get("type") == "update" and message.get("jobId") == job_id:
                        yield message
        except TimeoutError:
            raise CliError(f"no news of job {job_id} for {idle_timeout:g}s over {self.api}/ws") from None
        except ConnectionClosed as exc:
            if exc.rcvd and exc.rcvd.code == 1008:
                raise CliError(f"WebSocket {self.api}/ws: the API refused the API key", EXIT_BAD_REQUEST) from None
            raise CliError(f"WebSocket {self.api}/ws: connection closed ({exc})") from None
        except (InvalidHandshake, InvalidURI, OSError) as exc:
            raise CliError(f"cannot follow over {self.api}/ws: {exc or type(exc).__name__}") from None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
