"""Span records emitted through a tracer, with exactly their ids and times.

Each record becomes an SDK span started inside :func:`otel.ids.forced_ids` (the job's
id generator hands out the record's ids), parented on its parent's id, with its events
at their timestamps, its status and its end time. It then goes through the provider's
own pipeline (sampler, processors, exporter), as any live span does.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.tracing.records import STATUS_ERROR, STATUS_UNSET, SpanRecord
from otel.ids import forced_ids

__all__ = ["emit_spans"]

_TRACEPARENT = TraceContextTextMapPropagator()


def emit_spans(tracer: trace.Tracer, records: Iterable[SpanRecord]) -> None:
    """Emit every record as a finished span."""
    for record in records:
        _emit(tracer, record)


def _parent(record: SpanRecord) -> otel_context.Context:
    if not record.parent_id:
        return otel_context.Context()  # a root: a trace of its own (its id is forced)
    parent = SpanContext(
        trace_id=int(record.trace_id, 16),
        span_id=int(record.parent_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _emit(tracer: trace.Tracer, record: SpanRecord) -> None:
    links = []
    for traceparent, attributes in record.links:
        linked = trace.get_current_span(_TRACEPARENT.extract({"traceparent": traceparent})).get_span_context()
        if linked.is_valid:
            links.append(Link(linked, dict(attributes)))
    with forced_ids(int(record.trace_id, 16), int(record.span_id, 16)):
        span = tracer.start_span(
            record.name,
            context=_parent(record),
            kind=SpanKind.INTERNAL,
            attributes=dict(record.attributes),
            links=links,
            start_time=record.start_ns,
        )
    for event in record.events:
        span.add_event(event.name, dict(event.attributes), timestamp=event.time_ns)
    if record.status_code != STATUS_UNSET:
        # A description belongs to an error status only.
        message = record.status_message if record.status_code == STATUS_ERROR else None
        span.set_status(Status(StatusCode(record.status_code), message))
    span.end(end_time=record.end_ns)
