"""Local OTLP receivers for tests: what a collector would receive, decoded from the wire.

* :class:`OtlpHttpReceiver`: OTLP/HTTP with protobuf bodies (gzip or not) on
  ``/v1/traces``, ``/v1/logs`` and ``/v1/metrics``;
* :class:`OtlpGrpcReceiver`: the OTLP gRPC trace, logs and metrics services.

Both listen on 127.0.0.1 on an ephemeral port and keep every request in a
:class:`Received`.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

import grpc  # type: ignore[import-untyped]  # no stubs installed (types-grpcio)
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OtlpGrpcReceiver", "OtlpHttpReceiver", "Received", "attributes"]

ExportTraceRequest = trace_service_pb2.ExportTraceServiceRequest
ExportLogsRequest = logs_service_pb2.ExportLogsServiceRequest
ExportMetricsRequest = metrics_service_pb2.ExportMetricsServiceRequest


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(items: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list as a dict of plain Python values."""
    result: dict[str, Any] = {}
    for item in items:
        assert isinstance(item, KeyValue)
        result[item.key] = _value(item.value)
    return result


@dataclass
class Received:
    """Every export request one receiver got, decoded."""

    traces: list[ExportTraceRequest] = field(default_factory=list)
    logs: list[ExportLogsRequest] = field(default_factory=list)
    metrics: list[ExportMetricsRequest] = field(default_factory=list)
    #: Requests that could not be decoded (path or body), as "path: problem".
    rejected: list[str] = field(default_factory=list)
    content_encodings: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, message: Message) -> None:
        with self._lock:
            if isinstance(message, ExportTraceRequest):
                self.traces.append(message)
            elif isinstance(message, ExportLogsRequest):
                self.logs.append(message)
            elif isinstance(message, ExportMetricsRequest):
                self.metrics.append(message)
            else:  # pragma: no cover - only the three request types are registered
                raise TypeError(type(message))

    def spans(self) -> Iterator[tuple[Resource, Span]]:
        for request in list(self.traces):
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource_spans.resource, span

    def log_records(self) -> Iterator[tuple[Resource, LogRecord]]:
        for request in list(self.logs):
            for resource_logs in request.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        yield resource_logs.resource, record

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in list(self.metrics)
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }

    def metric_resources(self) -> Iterator[Resource]:
        for request in list(self.metrics):
            for resource_metrics in request.resource_metrics:
                yield resource_metrics.resource


# -- OTLP/HTTP ------------------------------------------------------------------------------

_HTTP_PATHS: Final[dict[str, tuple[type[Message], type[Message]]]] = {
    "/v1/traces": (ExportTraceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/logs": (ExportLogsRequest, logs_service_pb2.ExportLogsServiceResponse),
    "/v1/metrics": (ExportMetricsRequest, metrics_service_pb2.ExportMetricsServiceResponse),
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        kinds = _HTTP_PATHS.get(self.path)
        received = self.server.received
        if kinds is None:
            received.rejected.append(f"{self.path}: unknown path")
            self._reply(HTTPStatus.NOT_FOUND, b"")
            return
        request_type, response_type = kinds
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        received.content_encodings.add(encoding)
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            message = request_type()
            message.ParseFromString(body)
        except (OSError, zlib.error, DecodeError) as exc:
            received.rejected.append(f"{self.path}: {exc}")
            self._reply(HTTPStatus.BAD_REQUEST, b"")
            return
        received.add(message)
        self._reply(HTTPStatus.OK, response_type().SerializeToString())

    def _reply(self, status: HTTPStatus, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # quiet: tests read what was received, not the access log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: Received


class OtlpHttpReceiver:
    """``with OtlpHttpReceiver() as r:`` then point OTEL_EXPORTER_OTLP_ENDPOINT at ``r.endpoint``."""

    def __init__(self) -> None:
        self.received = Received()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.received = self.received
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http-receiver", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- OTLP/gRPC ------------------------------------------------------------------------------


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: ExportTraceRequest, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self._received.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: ExportLogsRequest, context: Any) -> logs_service_pb2.ExportLogsServiceResponse:
        self._received.add(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: ExportMetricsRequest, context: Any) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._received.add(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpGrpcReceiver:
    """The three OTLP gRPC services on an insecure ephemeral port."""

    def __init__(self) -> None:
        self.received = Received()
        self._executor = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc-receiver")
        self._server = grpc.server(self._executor)
        # the generated *_pb2_grpc modules are untyped
        add_trace: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_logs: Any = logs_service_pb2_grpc.add_LogsServiceServicer_to_server
        add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_trace(_TraceService(self.received), self._server)
        add_logs(_LogsService(self.received), self._server)
        add_metrics(_MetricsService(self.received), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop(grace=None).wait(5)
        self._executor.shutdown(wait=True, cancel_futures=True)
