"""Small real peers for programs we only talk to: an HTTP server speaking Ollama's /api/generate."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OllamaPeer:
    """Answers POST /api/generate like Ollama; `reply`, `delay` and `status` set what it says next."""

    def __init__(self):
        self.requests: list[dict] = []
        self.spans: list[dict] = []  # {prompt, t0, t1} per request, to prove overlap
        self.reply = json.dumps({"stagePrompt": "A calm studio, soft light.", "narration": "Hello from the test peer."})
        self.body: str | None = None  # raw body override (e.g. not JSON)
        self.status = 200
        self.delay = 0.0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, json.dumps({"models": []}))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                peer.requests.append(body)
                if self.path != "/api/generate":
                    return self._send(404, json.dumps({"error": "not found"}))
                t0 = time.monotonic()
                time.sleep(peer.delay)
                peer.spans.append({"prompt": body.get("prompt", ""), "t0": t0, "t1": time.monotonic()})
                if peer.body is not None:
                    return self._send(peer.status, peer.body)
                if peer.status >= 400:
                    return self._send(peer.status, json.dumps({"error": "model 'x' not found"}))
                answer = {
                    "model": body.get("model"),
                    "response": peer.reply,
                    "done": True,
                    "prompt_eval_count": 12,
                    "eval_count": 30,
                }
                self._send(200, json.dumps(answer))

            def _send(self, status: int, text: str):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        self.reply = json.dumps({"stagePrompt": "A calm studio, soft light.", "narration": "Hello from the test peer."})
        self.body, self.status, self.delay = None, 200, 0.0

    def __enter__(self) -> OllamaPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
