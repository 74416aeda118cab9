"""Test helper (not tests): a real local HTTP server that receives webhooks.

It listens on 127.0.0.1 on an ephemeral port, in a thread, records every request
(method, path, headers, raw body, arrival time) and answers from a scripted sequence of
responses; once the script is used up it answers ``default``. A scripted response may
carry headers (``Retry-After``) or hang until released (a receiver stuck mid-request).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HANG", "Received", "Receiver", "Reply", "receiver"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status, headers, and optionally hanging before answering."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False
    #: Seconds between the bytes of a long answer (a receiver trickling it); 0: at once.
    trickle: float = 0.0


#: A reply that does not come until the receiver is closed (or the client goes away).
HANG = Reply(200, hang=True)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    #: Header names lower-cased.
    headers: Mapping[str, str]
    body: bytes
    at: float
    #: The status this request was answered with (None: it hung).
    status: int | None

    @property
    def event(self) -> str:
        return self.headers.get("x-orchestrator-event", "")

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-orchestrator-delivery", "")


class Receiver:
    def __init__(self, script: Sequence[int | Reply] = (), default: int | Reply = 200) -> None:
        self._script = [r if isinstance(r, Reply) else Reply(r) for r in script]
        self._default = default if isinstance(default, Reply) else Reply(default)
        self._lock = threading.Condition()
        self._requests: list[Received] = []
        #: When the handling of each delivery id ended (answered, cut, or hung up).
        self.finished: dict[str, float] = {}
        self._released = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = owner._next_reply()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner._requests.append(
                        Received(
                            "POST", self.path, headers, body, time.monotonic(), None if reply.hang else reply.status
                        )
                    )
                    owner._lock.notify_all()
                try:
                    if reply.hang:
                        owner._released.wait(timeout=30)
                        self.close_connection = True
                        return
                    if reply.trickle:
                        self._trickle(reply)
                        return
                    self._answer(reply)
                finally:
                    with owner._lock:
                        owner.finished[headers.get("x-orchestrator-delivery", "")] = time.monotonic()
                        owner._lock.notify_all()

            def _trickle(self, reply: Reply) -> None:
                """Status and headers, then one body byte every ``reply.trickle`` seconds
                until the client goes away (or the receiver closes)."""
                self.send_response(reply.status)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.close_connection = True
                try:
                    while not owner._released.wait(reply.trickle):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                except OSError:
                    pass  # the client cut it

            def _answer(self, reply: Reply) -> None:
                payload = b'{"ok":true}'
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away mid-request (a cancelled dispatcher)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-receiver", daemon=True
        )

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else self._default

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Until at least ``count`` requests arrived; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} webhook requests within {timeout} s, got {len(self._requests)}: "
                        f"{[r.event for r in self._requests]}"
                    )
                self._lock.wait(left)
            return list(self._requests)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def receiver(script: Sequence[int | Reply] = (), default: int | Reply = 200) -> Iterator[Receiver]:
    server = Receiver(script, default)
    server.start()
    try:
        yield server
    finally:
        server.close()
