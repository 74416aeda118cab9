"""The direct OTLP protobuf encoder (otel/otlp_proto.py) writes what the official encoder
(opentelemetry.exporter.otlp.proto.common) writes: compared parsed (field for field) and
byte for byte on spans and log records of every shape, on generated values, and where
it leaves a batch to the official encoder; its exporters keep the SDK exporter's
behaviour over real HTTP (endpoint, headers, gzip, retries, timeout, failures)."""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry._logs import LogRecord as SdkLogRecord
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from otlp_receiver import OtlpHttpReceiver, attributes

from otel import otlp_proto
from otel.logs import OtlpLogHandler
from otel.otlp_proto import (
    OTLPLogExporter,
    OTLPSpanExporter,
    Unsupported,
    encode_logs_proto,
    encode_spans_proto,
    serialize_logs,
    serialize_spans,
)

RESOURCE = Resource.create({"service.name": "orchestrator", "service.version": "0.1.0", "service.instance.id": "i-1"})
REMOTE = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
#: Attribute values of every type a span attribute may hold (the SDK checks them).
EXOTIC: dict[str, Any] = {
    "text": "job 0190c0de",
    "empty": "",
    "unicode": "naïve ☃ 漢字 \U0001f680",
    "nul": "a\x00b",
    "true": True,
    "false": False,
    "zero": 0,
    "small": 7,
    "varint-edge": 127,
    "two-bytes": 128,
    "big": 16384,
    "negative": -1,
    "int64-max": 2**63 - 1,
    "int64-min": -(2**63),
    "ratio": 0.25,
    "negative-zero": -0.0,
    "nan": math.nan,
    "infinity": math.inf,
    "tiny": 5e-324,
    "strings": ["a", "", "ü"],
    "bools": [True, False],
    "ints": [0, -5, 2**40],
    "floats": [1.5, -2.0],
    "no-items": [],
    "tuple": ("x", "y"),
    "bytes": b"\x00\xffraw",
}


def spans_of(provider: TracerProvider, exporter: InMemorySpanExporter) -> Sequence[ReadableSpan]:
    provider.force_flush()
    return exporter.get_finished_spans()


def assert_same_spans(spans: Sequence[ReadableSpan]) -> None:
    official = encode_spans(spans)
    direct = encode_spans_proto(spans)
    assert ExportTraceServiceRequest.FromString(direct) == official  # field for field
    assert direct == official.SerializePartialToString()  # and byte for byte


def assert_same_logs(batch: Sequence[ReadableLogRecord]) -> None:
    official = encode_logs(batch)
    direct = encode_logs_proto(batch)
    assert ExportLogsServiceRequest.FromString(direct) == official
    assert direct == official.SerializeToString()


def tracing(**kwargs: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False, **{"resource": RESOURCE, **kwargs})
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


# -- spans ---------------------------------------------------------------------------------


def test_spans_of_every_shape_encode_like_the_official_encoder() -> None:
    provider, exporter = tracing()
    tracer = provider.get_tracer("orchestrator", "1.0", schema_url="https://opentelemetry.io/schemas/1.26.0")
    with tracer.start_as_current_span(
        "job", kind=SpanKind.SERVER, attributes=EXOTIC, links=[Link(REMOTE, {"link.kind": "caller", "n": 2})]
    ) as root:
        root.add_event("job.lifecycle.start", {"duration_ms": 1.25, "reason": "claimed", "attempt": 1}, timestamp=123)
        root.add_event("no attributes")
        root.add_event("", {"": "an empty key"})
        with tracer.start_as_current_span("job.module", kind=SpanKind.CLIENT) as child:
            child.record_exception(RuntimeError("boom ☃"))
            child.set_status(Status(StatusCode.ERROR, "boom"))
        links = [Link(child.get_span_context())]
        with tracer.start_as_current_span("job.finalize", kind=SpanKind.PRODUCER, links=links):
            pass
        root.set_status(Status(StatusCode.OK))
    queued = tracer.start_span(
        "job.queued",
        context=trace.set_span_in_context(NonRecordingSpan(REMOTE)),
        kind=SpanKind.CONSUMER,
        start_time=1,
        attributes={"attempt": 3},
    )
    queued.end(end_time=2**63)
    unnamed = tracer.start_span("")
    unnamed.end()
    spans = spans_of(provider, exporter)
    assert len(spans) == 5

    assert_same_spans(spans)


def test_trace_state_dropped_counts_and_unended_spans_encode_alike() -> None:
    provider, exporter = tracing(
        span_limits=SpanLimits(
            max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1, max_link_attributes=1
        )
    )
    tracer = provider.get_tracer("limited")
    parent = SpanContext(
        0x1,
        0x2,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    span = tracer.start_span(
        "limited",
        context=trace.set_span_in_context(NonRecordingSpan(parent)),
        attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(REMOTE, {"x": 1, "y": 2}), Link(parent)],
    )
    span.add_event("e1", {"x": 1, "y": 2})
    span.add_event("e2")
    running = span._readable_span()  # type: ignore[attr-defined]  # as a processor may see it: no end yet
    span.end()
    spans = [*spans_of(provider, exporter), running]
    assert spans[0].dropped_attributes == 1
    assert spans[0].dropped_events == 1
    assert spans[0].dropped_links == 1
    assert spans[1].end_time is None

    assert_same_spans(spans)


def test_resources_and_scopes_are_grouped_like_the_official_encoder() -> None:
    # Two providers with distinct but equal resources, one with another resource; scopes
    # that are equal, differ by version, by schema URL, by attributes; all interleaved.
    exporter = InMemorySpanExporter()
    same_a = Resource({"service.name": "a"}, schema_url="https://example.com/1")
    same_b = Resource({"service.name": "a"}, schema_url="https://example.com/1")
    other = Resource({"service.name": "b", "n": 3, "list": ["x"]})
    providers = []
    for resource in (same_a, other, same_b, Resource.get_empty()):
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers.append(provider)
    scopes = [
        ("s", None, None, None),
        ("s", "2", None, None),
        ("s", None, "https://x/schema", None),
        ("s", None, None, {"scope.attr": "v", "n": 1}),
        ("", None, None, None),
    ]
    for i in range(12):
        name, version, schema, attrs = scopes[i % len(scopes)]
        tracer = providers[i % len(providers)].get_tracer(name, version, schema_url=schema, attributes=attrs)
        tracer.start_span(f"span-{i}").end()
    spans = exporter.get_finished_spans()

    assert_same_spans(spans)
    assert_same_spans(list(reversed(spans)))
    assert_same_spans([])


def test_spans_without_a_scope_encode_alike() -> None:
    provider, exporter = tracing()
    provider.get_tracer("t").start_span("s").end()
    (span,) = spans_of(provider, exporter)
    bare = ReadableSpan(
        name="bare",
        context=span.context,
        resource=RESOURCE,
        instrumentation_scope=None,
        attributes={"k": "v"},
        start_time=5,
        end_time=6,
        kind=SpanKind.INTERNAL,
    )

    assert_same_spans([bare, span])


_TEXT = st.text(max_size=20)
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_PRIMITIVE = st.one_of(_TEXT, st.booleans(), _INT64, _FLOAT)
_SPAN_VALUE = st.one_of(
    _PRIMITIVE,
    st.lists(_TEXT, max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.lists(_INT64, max_size=4),
    st.lists(_FLOAT, max_size=4),
)
_SPAN_ATTRIBUTES = st.dictionaries(_TEXT, _SPAN_VALUE, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attributes=_SPAN_ATTRIBUTES,
    events=st.lists(st.tuples(_TEXT, _SPAN_ATTRIBUTES, st.integers(min_value=0, max_value=2**64 - 1)), max_size=3),
    name=_TEXT,
    status=st.sampled_from([None, (StatusCode.OK, None), (StatusCode.ERROR, "failed ☃"), (StatusCode.ERROR, None)]),
    kind=st.sampled_from(list(SpanKind)),
    remote_parent=st.booleans(),
)
def test_generated_spans_encode_like_the_official_encoder(
    attributes: dict[str, Any],
    events: list[tuple[str, dict[str, Any], int]],
    name: str,
    status: tuple[StatusCode, str | None] | None,
    kind: SpanKind,
    remote_parent: bool,
) -> None:
    provider, exporter = tracing()
    tracer = provider.get_tracer("generated")
    parent = SpanContext(0x1234, 0x5678, is_remote=remote_parent, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    span = tracer.start_span(
        name,
        context=trace.set_span_in_context(NonRecordingSpan(parent)),
        kind=kind,
        attributes=attributes,
        links=[Link(parent, attributes)],
    )
    for event_name, event_attributes, at in events:
        span.add_event(event_name, event_attributes, timestamp=at)
    if status is not None:
        span.set_status(Status(*status))
    span.end()

    assert_same_spans(spans_of(provider, exporter))


# -- where the official encoder decides -------------------------------------------------------


def _span_with(attributes: dict[str, Any]) -> ReadableSpan:
    """A span as a processor hands it over, with attributes the SDK would have refused:
    the exporter must still cope with whatever it is given."""
    return ReadableSpan(
        name="odd",
        context=SpanContext(1, 2, is_remote=False),
        resource=RESOURCE,
        instrumentation_scope=InstrumentationScope("odd"),
        attributes=attributes,
        start_time=1,
        end_time=2,
        kind=SpanKind.INTERNAL,
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("lone \udc80 surrogate", id="lone-surrogate"),
        pytest.param(2**63, id="above-int64"),
        pytest.param(-(2**63) - 1, id="below-int64"),
        pytest.param({1, 2}, id="set"),
        pytest.param(object(), id="object"),
        pytest.param(["ok", 2**70], id="array-with-a-huge-int"),
    ],
)
def test_values_the_direct_encoder_leaves_are_encoded_by_the_official_one(value: object) -> None:
    span = _span_with({"fine": "kept", "odd": value})
    with pytest.raises(Unsupported):
        encode_spans_proto([span])

    # The official encoder drops the attribute it cannot encode (and logs it): the
    # batch's bytes are exactly its own.
    logging.getLogger("opentelemetry.exporter.otlp.proto.common._internal").disabled = True
    try:
        assert serialize_spans([span]) == encode_spans([span]).SerializePartialToString()
    finally:
        logging.getLogger("opentelemetry.exporter.otlp.proto.common._internal").disabled = False
    decoded = ExportTraceServiceRequest.FromString(serialize_spans([span]))
    assert "fine" in attributes(decoded.resource_spans[0].scope_spans[0].spans[0].attributes)


def test_ids_wider_than_their_fields_are_left_to_the_official_encoder() -> None:
    span = ReadableSpan(name="wide", context=SpanContext(2**128, 1, is_remote=False), resource=RESOURCE)
    with pytest.raises(Unsupported):
        encode_spans_proto([span])
    with pytest.raises(OverflowError):
        serialize_spans([span])  # the official encoder refuses it too: the export fails


# -- logs ----------------------------------------------------------------------------------


@pytest.fixture
def otlp_logs() -> Iterator[tuple[logging.Logger, InMemoryLogRecordExporter]]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger("orchestrator.test_otlp_proto")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = OtlpLogHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        yield logger, exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def test_log_records_of_every_shape_encode_like_the_official_encoder(
    otlp_logs: tuple[logging.Logger, InMemoryLogRecordExporter],
) -> None:
    logger, exporter = otlp_logs
    other = logging.getLogger("orchestrator.test_otlp_proto.other")  # another scope
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    logger.warning("outside any span")
    with tracer.start_as_current_span("job"):
        logger.info(
            "with fields",
            extra={
                "otel.event.name": "job.lifecycle.start",
                "orchestrator_fields": {"job_id": "j", "n": 3, "ratio": 0.5, "ok": False},
            },
        )
        other.error("from another logger ☃")
        try:
            raise ValueError("bad \x00 value")
        except ValueError:
            logger.exception("with a traceback")
        logger.debug("")
        logger.critical("%s and %d", "args", 3)
    batch = exporter.get_finished_logs()
    assert len(batch) == 6

    assert_same_logs(batch)


_LOG_VALUE = st.recursive(
    st.one_of(st.none(), _PRIMITIVE, st.binary(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_LOG_VALUE,
    attributes=st.dictionaries(_TEXT, _LOG_VALUE, max_size=6),
    severity=st.sampled_from([None, *SeverityNumber]),
    severity_text=st.one_of(st.none(), _TEXT),
    event_name=st.one_of(st.none(), _TEXT),
    sampled=st.booleans(),
    in_span=st.booleans(),
    timestamp=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_generated_log_records_encode_like_the_official_encoder(
    body: Any,
    attributes: dict[str, Any],
    severity: SeverityNumber | None,
    severity_text: str | None,
    event_name: str | None,
    sampled: bool,
    in_span: bool,
    timestamp: int | None,
) -> None:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    record = SdkLogRecord(
        timestamp=timestamp,
        observed_timestamp=12345,
        trace_id=0xABCDEF if in_span else 0,
        span_id=0x1234 if in_span else 0,
        trace_flags=flags,
        severity_text=severity_text,
        severity_number=severity,
        body=body,
        attributes=attributes,
        event_name=event_name,
    )
    readable = ReadableLogRecord(record, RESOURCE, InstrumentationScope("generated", "1"), LogRecordLimits())

    assert_same_logs([readable, readable])


def test_a_log_body_the_official_encoder_refuses_fails_the_batch_there_too() -> None:
    record = SdkLogRecord(
        timestamp=1, observed_timestamp=1, trace_id=0, span_id=0, trace_flags=TraceFlags(0), body={1, 2}
    )
    readable = ReadableLogRecord(record, RESOURCE)
    with pytest.raises(Unsupported):
        encode_logs_proto([readable])
    with pytest.raises(Exception, match="Invalid type"):
        serialize_logs([readable])


# -- the exporters, over real HTTP ----------------------------------------------------------


def _one_span() -> Sequence[ReadableSpan]:
    provider, exporter = tracing()
    with provider.get_tracer("orchestrator").start_as_current_span("job", attributes={"job.id": "j-1"}) as span:
        span.add_event("job.lifecycle.complete", {"reason": "all 1 modules completed"})
    return spans_of(provider, exporter)


def test_exporters_are_the_sdk_exporters_with_their_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20s3cret")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with OtlpHttpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        spans = OTLPSpanExporter()
        logs = OTLPLogExporter()
        assert isinstance(spans, SpanExporter)
        sent, batch = _one_span(), _log_batch()
        try:
            assert spans.export(sent) is SpanExportResult.SUCCESS
            assert logs.export(batch) is LogRecordExportResult.SUCCESS
        finally:
            spans.shutdown()
            logs.shutdown()
        received = receiver.received
    assert received.rejected == []
    assert received.content_encodings == {"gzip"}
    ((_, span),) = list(received.spans())
    assert span.name == "job"
    assert attributes(span.attributes) == {"job.id": "j-1"}
    assert [e.name for e in span.events] == ["job.lifecycle.complete"]
    ((_, record),) = list(received.log_records())
    assert record.body.string_value == "exported"
    assert received.traces == [encode_spans(sent)]
    assert received.logs == [encode_logs(batch)]


def _log_batch() -> Sequence[ReadableLogRecord]:
    record = SdkLogRecord(
        timestamp=1,
        observed_timestamp=2,
        trace_id=0,
        span_id=0,
        trace_flags=TraceFlags(0),
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body="exported",
    )
    return [ReadableLogRecord(record, RESOURCE, InstrumentationScope("orchestrator.lifecycle"))]


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (with Retry-After: 0) to the first ``failures`` requests, then 200;
    records each request's headers and body."""

    protocol_version = "HTTP/1.1"
    failures = 0
    requests: list[tuple[dict[str, str], bytes]] = []
    lock = threading.Lock()
    hang = False
    release = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            fail = len(self.requests) <= self.failures
        if self.hang:
            self.release.wait(10)  # a collector that never answers (until the test ends)
        self.send_response(503 if fail else 200)
        if fail:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"requests": [], "lock": threading.Lock(), "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def test_transient_failures_are_retried_and_the_request_is_the_same(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    handler.failures = 2
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"x-tenant": "acme"}, timeout=10)
    spans = _one_span()
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(handler.requests) == 3
    bodies = {body for _, body in handler.requests}
    assert bodies == {encode_spans(spans).SerializePartialToString()}
    headers = handler.requests[0][0]
    assert headers["x-tenant"] == "acme"
    assert headers["content-type"] == "application/x-protobuf"


def test_a_permanent_failure_is_a_failed_export(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    handler.failures = 100
    exporter = OTLPLogExporter(endpoint=f"{url}/v1/logs", timeout=1.5)
    try:
        started = time.monotonic()
        assert exporter.export(_log_batch()) is LogRecordExportResult.FAILURE
        assert time.monotonic() - started < 5
    finally:
        exporter.shutdown()
    assert len(handler.requests) >= 2  # retried before giving up


def test_a_collector_that_never_answers_fails_the_export_within_its_timeout(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    handler.hang = True
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=1)
    try:
        started = time.monotonic()
        assert exporter.export(_one_span()) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 5
    finally:
        handler.release.set()
        exporter.shutdown()


def test_a_request_over_the_size_limit_is_dropped_unsent(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", max_request_size=10)
    try:
        assert exporter.export(_one_span()) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert handler.requests == []


def test_an_exporter_shut_down_refuses_batches(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    exporter.shutdown()
    assert exporter.export(_one_span()) is SpanExportResult.FAILURE
    assert handler.requests == []


def test_gzip_bodies_decompress_to_the_official_encoding(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=otlp_proto._http_traces.Compression.Gzip)
    spans = _one_span()
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    ((headers, body),) = handler.requests
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == encode_spans(spans).SerializePartialToString()


def test_http_protobuf_uses_these_exporters_and_grpc_the_official_ones() -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

    from otel.setup import _exporters

    http = _exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, None, True)
    grpc = _exporters(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None, True
    )
    try:
        assert isinstance(http[0], OTLPSpanExporter)
        assert isinstance(http[1], OTLPLogExporter)
        assert isinstance(grpc[0], GrpcSpans)
        assert isinstance(grpc[1], GrpcLogs)
    finally:
        for exporter in (*http, *grpc):
            exporter.shutdown()


def test_values_that_compare_equal_but_encode_differently_are_never_confused() -> None:
    # 0.0 == -0.0, True == 1 == 1.0: the encoder remembers encoded attributes between
    # spans and batches, and must not hand one of them out for another.
    provider, exporter = tracing()
    tracer = provider.get_tracer("cache")
    for value in (0.0, -0.0, 1, True, 1.0, False, 0, "1", "", 2**14, 2**14 + 1):
        tracer.start_span("s", attributes={"x": value, "y": [value] if not isinstance(value, str) else value}).end()
    spans = spans_of(provider, exporter)
    for span in spans:
        assert_same_spans([span])
    assert_same_spans(spans)
    assert_same_spans(list(reversed(spans)))
