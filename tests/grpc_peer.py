"""A small gRPC server for test peers: unary methods over plaintext HTTP/2 (h2), protobuf messages in and out."""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from google.protobuf.message import Message
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, RequestReceived, StreamEnded, StreamReset
from temporalio.service import RPCStatusCode

# A method's full path ("/package.Service/Method") -> its request class and the handler answering a request.
Methods = dict[str, tuple[type[Message], Callable[[Any], Message]]]

RESPONSE_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]
# grpc-message is percent-encoded: printable ASCII other than "%" goes as is.
MESSAGE_SAFE = "".join(map(chr, range(0x20, 0x7F))).replace("%", "")


class RpcAborted(Exception):
    """Raised by a handler: the call ends with this status and message instead of a response."""

    def __init__(self, status: RPCStatusCode, message: str):
        super().__init__(f"{status.name}: {message}")
        self.status, self.message = status, message


def unframe(body: bytes, encoding: str) -> bytes:
    """The one message of a unary request: a compressed flag, a 4-byte big-endian length, the payload."""
    if len(body) < 5:
        raise RpcAborted(RPCStatusCode.INTERNAL, "request carries no message")
    compressed, length = struct.unpack(">BI", body[:5])
    payload = body[5:]
    if len(payload) != length:
        raise RpcAborted(RPCStatusCode.INTERNAL, f"message of {len(payload)} bytes, framed as {length}")
    if not compressed:
        return payload
    if encoding != "gzip":  # the Temporal SDK compresses its requests with gzip by default
        raise RpcAborted(RPCStatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported")
    return gzip.decompress(payload)


class GrpcConnection:
    """One client's HTTP/2 connection: requests are answered on the thread that reads them."""

    def __init__(self, sock: socket.socket, methods: Methods):
        self.sock, self.methods = sock, methods
        self.h2 = H2Connection(H2Configuration(client_side=False))
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.lock = threading.Lock()  # close() comes from another thread
        self.closed = False

    def serve(self) -> None:
        with self.lock:
            self.h2.initiate_connection()
            self.sock.sendall(self.h2.data_to_send())
        with contextlib.suppress(ConnectionError):
            while data := self.sock.recv(65536):
                with self.lock:
                    if self.closed:
                        return
                    for event in self.h2.receive_data(data):
                        self.handle(event)
                    self.sock.sendall(self.h2.data_to_send())  # answers, acknowledgements, pings' replies

    def handle(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            headers = {name.decode(): value.decode() for name, value in event.headers}
            self.requests[event.stream_id] = (headers, bytearray())
        elif isinstance(event, DataReceived):
            self.requests[event.stream_id][1].extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            headers, body = self.requests.pop(event.stream_id)
            self.answer(event.stream_id, headers, bytes(body))
        elif isinstance(event, StreamReset):
            self.requests.pop(event.stream_id, None)

    def answer(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        """Headers, the response message and trailers; or, when the call fails, trailers only."""
        try:
            if headers[":path"] not in self.methods:
                raise RpcAborted(RPCStatusCode.UNIMPLEMENTED, f"unknown method {headers[':path']}")
            request_type, handler = self.methods[headers[":path"]]
            request = request_type.FromString(unframe(body, headers.get("grpc-encoding", "identity")))
            reply = handler(request).SerializeToString()
        except RpcAborted as abort:
            status = [("grpc-status", str(int(abort.status))), ("grpc-message", quote(abort.message, MESSAGE_SAFE))]
            self.h2.send_headers(stream_id, RESPONSE_HEADERS + status, end_stream=True)
            return
        # Answers are small: they fit the client's initial flow-control window and one DATA frame.
        self.h2.send_headers(stream_id, RESPONSE_HEADERS)
        self.h2.send_data(stream_id, struct.pack(">BI", 0, len(reply)) + reply)
        self.h2.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)

    def close(self) -> None:
        """GOAWAY, then end the connection (its reading thread sees the end and returns)."""
        with self.lock, contextlib.suppress(OSError):
            self.closed = True
            self.h2.close_connection()
            self.sock.sendall(self.h2.data_to_send())
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class GrpcServer:
    """Serves `methods` on 127.0.0.1 (a free port, `address`), a thread per connection, from start() to close()."""

    def __init__(self, methods: Methods):
        self.connections: set[GrpcConnection] = set()
        self.lock = threading.Lock()
        self.closed = False
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                server.serve(GrpcConnection(self.request, methods))

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.tcp.server_address[1]}"
        self.thread = threading.Thread(target=self.tcp.serve_forever, args=(0.05,), daemon=True)

    def serve(self, connection: GrpcConnection) -> None:
        with self.lock:
            if self.closed:
                return
            self.connections.add(connection)
        try:
            connection.serve()
        finally:
            with self.lock:
                self.connections.discard(connection)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop accepting, close every open connection, and wait for their threads."""
        self.tcp.shutdown()
        with self.lock:
            self.closed = True
            connections = list(self.connections)
        for connection in connections:
            connection.close()
        self.tcp.server_close()
