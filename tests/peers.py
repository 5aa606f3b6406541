"""Small real peers for programs we only talk to: Ollama's /api/generate over HTTP, a locked Temporal frontend."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    AddSearchAttributesResponse,
    ListSearchAttributesRequest,
    ListSearchAttributesResponse,
)
from temporalio.api.workflowservice.v1 import (
    CountWorkflowExecutionsRequest,
    CountWorkflowExecutionsResponse,
    GetSystemInfoRequest,
    GetSystemInfoResponse,
)
from temporalio.service import RPCStatusCode

from tests.grpc_peer import GrpcServer, RpcAborted

# Not Ollama's: how the bench steers a peer that runs in a process of its own (bench/llm_peer.py).
CONTROL_DELAY = "/_peer/delay"  # PUT {"seconds": s}: hold each reply that long
CONTROL_REQUESTS = "/_peer/requests"  # GET: {"requests": how many /api/generate calls so far}


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
            # Like Ollama (Go's net/http): connections are kept alive, and a reply is not held back by Nagle.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == CONTROL_REQUESTS:
                    return self._send(200, json.dumps({"requests": len(peer.requests)}))
                self._send(200, json.dumps({"models": []}))

            def do_PUT(self):
                if self.path != CONTROL_DELAY:
                    return self._send(404, json.dumps({"error": "not found"}))
                length = int(self.headers.get("Content-Length") or 0)
                peer.delay = float(json.loads(self.rfile.read(length))["seconds"])
                self._send(200, json.dumps({"seconds": peer.delay}))

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
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller went away (a worker killed mid-call): nothing to answer

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


class LockedTemporalPeer:
    """A Temporal frontend over gRPC that, like Temporal Cloud, refuses to manage search attributes.

    `list_status`/`add_status` are the status codes ListSearchAttributes/AddSearchAttributes answer with (None: OK,
    nothing defined); `defined` are the attributes a visibility query (CountWorkflowExecutions) accepts.
    """

    def __init__(
        self,
        list_status: RPCStatusCode | None = None,
        add_status: RPCStatusCode | None = None,
        defined: tuple[str, ...] = (),
    ):
        self.calls: list[str] = []

        def list_search_attributes(request: ListSearchAttributesRequest) -> ListSearchAttributesResponse:
            self.calls.append("ListSearchAttributes")
            if list_status:
                raise RpcAborted(list_status, "Request unauthorized.")
            return ListSearchAttributesResponse()

        def add_search_attributes(request: AddSearchAttributesRequest) -> AddSearchAttributesResponse:
            self.calls.append("AddSearchAttributes")
            raise RpcAborted(add_status or RPCStatusCode.PERMISSION_DENIED, "Request unauthorized.")

        def count_workflow_executions(request: CountWorkflowExecutionsRequest) -> CountWorkflowExecutionsResponse:
            self.calls.append(f"CountWorkflowExecutions {request.query}")
            name = request.query.split(" ")[0]
            if name not in defined:
                raise RpcAborted(RPCStatusCode.INVALID_ARGUMENT, f"invalid query: invalid search attribute: {name}")
            return CountWorkflowExecutionsResponse(count=0)

        operator = "/temporal.api.operatorservice.v1.OperatorService/"
        frontend = "/temporal.api.workflowservice.v1.WorkflowService/"
        self.server = GrpcServer(
            {
                operator + "ListSearchAttributes": (ListSearchAttributesRequest, list_search_attributes),
                operator + "AddSearchAttributes": (AddSearchAttributesRequest, add_search_attributes),
                frontend + "GetSystemInfo": (GetSystemInfoRequest, lambda request: GetSystemInfoResponse()),
                frontend + "CountWorkflowExecutions": (CountWorkflowExecutionsRequest, count_workflow_executions),
            }
        )
        self.address = self.server.address

    def __enter__(self) -> LockedTemporalPeer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()
