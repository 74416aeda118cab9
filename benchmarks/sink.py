"""A light OTLP/HTTP sink: accepts POSTs to ``/v1/traces``, ``/v1/logs`` and
``/v1/metrics``, reads and discards the body, answers 200 at once.

``python -m benchmarks.sink [--port N]`` prints ``port N`` when listening and, on
SIGTERM/SIGINT, one JSON line with the requests and bytes received per path. It runs in
its own process so that receiving telemetry never competes with the benchmark's
producer for the GIL.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["closed_port", "main"]

_EMPTY_RESPONSE = b""  # an empty Export*ServiceResponse in protobuf


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: Counter[str] = Counter()
    received: Counter[str] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        with self.lock:
            self.requests[self.path] += 1
            self.received[self.path] += length
        known = self.path in ("/v1/traces", "/v1/logs", "/v1/metrics")
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(_EMPTY_RESPONSE)))
        self.end_headers()
        self.wfile.write(_EMPTY_RESPONSE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    print(f"port {server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    with _Handler.lock:
        print(json.dumps({"requests": dict(_Handler.requests), "bytes": dict(_Handler.received)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
