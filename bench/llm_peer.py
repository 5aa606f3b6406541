"""The Ollama peer (tests/peers.py) in a process of its own, as Ollama is.

In the bench's own process it answered ~35 % fewer queued jobs a second: its threads waited for the interpreter
while the bench's event loop, its status probe and the floor's worker ran. Steered over HTTP (`hold`, `requests`).
Run alone: `.venv/bin/python -m bench.llm_peer` prints its address, and serves until its standard input closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from bench.http_probe import HttpProbe
from tests.peers import CONTROL_DELAY, CONTROL_REQUESTS, OllamaPeer

REPO = Path(__file__).resolve().parents[1]


class LlmPeer:
    """An Ollama-speaking peer in a child process; `url` once entered."""

    url: str

    def __enter__(self) -> LlmPeer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.llm_peer"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the LLM peer did not start (it said {self.url!r})")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # its signal to stop
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    async def hold(self, seconds: float) -> None:
        """Hold each reply `seconds` before answering (0: answer at once)."""
        await self._ask("PUT", CONTROL_DELAY, json.dumps({"seconds": seconds}).encode())

    async def requests(self) -> int:
        """How many /api/generate calls it has had."""
        return (await self._ask("GET", CONTROL_REQUESTS))["requests"]

    async def _ask(self, method: str, path: str, body: bytes = b"") -> dict:
        # The bench's own plain-HTTP client: an httpx client builds a TLS context first, ~30 ms of the bench's loop,
        # and the WebSocket phase asks every 50 ms.
        probe = HttpProbe(self.url, timeout=10)
        try:
            status, answer = await probe.request(method, path, body)
        finally:
            await probe.aclose()
        if status != 200:
            raise RuntimeError(f"{method} {path}: the LLM peer answered {status} {answer[:200]!r}")
        return json.loads(answer)


def main() -> None:
    with OllamaPeer() as peer:
        print(peer.url, flush=True)
        sys.stdin.read()  # until the parent closes it, or dies


if __name__ == "__main__":
    main()
