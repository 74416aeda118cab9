"""The direct OTLP/JSON encoder of the embedded default writes exactly what the
protobuf path (encode_spans/encode_logs, then MessageToDict with hex ids) would."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel.files import to_otlp_json
from otel.logs import OtlpLogHandler
from otel.otlp_json import encode_logs_json, encode_spans_json

RESOURCE = Resource.create({"service.name": "orchestrator", "service.version": "0.1.0"})


def test_spans_of_every_shape_encode_like_the_protobuf_path() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("orchestrator", "1.0")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with tracer.start_as_current_span(
        "job",
        kind=SpanKind.SERVER,
        attributes={"job_id": "j1", "attempt": 2, "ratio": 0.5, "ok": True, "zero": 0, "empty": "", "tags": ["a", "b"]},
        links=[Link(remote, {"link.kind": "caller"})],
    ) as root:
        root.add_event("job.lifecycle.start", {"duration_ms": 1.25, "reason": "claimed"}, timestamp=123)
        with tracer.start_as_current_span("job.module", kind=SpanKind.CLIENT) as child:
            child.record_exception(RuntimeError("boom"))
            child.set_status(Status(StatusCode.ERROR, "boom"))
        root.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span("job.queued", context=trace.set_span_in_context(NonRecordingSpan(remote))):
        pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 3

    assert encode_spans_json(spans) == to_otlp_json(encode_spans(spans))


def test_log_records_encode_like_the_protobuf_path() -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger("orchestrator.test_otlp_json")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = OtlpLogHandler(logger_provider=provider)
    logger.addHandler(handler)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    try:
        logger.warning("outside any span")
        with tracer.start_as_current_span("job"):
            logger.info(
                "with fields",
                extra={"otel.event.name": "job.lifecycle.start", "orchestrator_fields": {"job_id": "j", "n": 3}},
            )
            try:
                raise ValueError("bad")
            except ValueError:
                logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    batch = exporter.get_finished_logs()
    assert len(batch) == 3

    assert encode_logs_json(batch) == to_otlp_json(encode_logs(batch))
