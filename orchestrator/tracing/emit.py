"""Span records emitted through a tracer, with exactly their ids and times.

Each record becomes a finished span with the record's ids, parent, events at their
timestamps, status and end time, and goes through the provider's own pipeline (sampler,
processors, exporter), as any live span does. Two ways, one result (tests compare the
exported spans field for field):

* directly: the tracer's sampler decides, and the finished span (the SDK's
  ``ReadableSpan``) is handed to the tracer's span processors, as ``Span.end`` hands
  it; no live span object, no attribute containers. Taken when the tracer is the SDK's
  and the record is within its span limits with plain attribute values;
* otherwise through the SDK: a span started inside :func:`otel.ids.forced_ids` (the
  job's id generator hands out the record's ids), its events added, then ended.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, Tracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.tracing.records import STATUS_ERROR, STATUS_UNSET, SpanRecord
from otel.ids import forced_ids

__all__ = ["emit_spans"]

_TRACEPARENT = TraceContextTextMapPropagator()


def emit_spans(tracer: trace.Tracer, records: Iterable[SpanRecord]) -> None:
    """Emit every record as a finished span."""
    direct = _DirectEmitter.of(tracer)
    for record in records:
        if direct is None or not direct.emit(record):
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
    links = _links(record)
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


#: Attribute value types every exporter takes as they are (anything else: the SDK path).
_PLAIN: Final = frozenset({str, bool, int, float})


def _plain(attributes: Mapping[str, Any], limit: int | None) -> bool:
    return (limit is None or len(attributes) <= limit) and all(type(v) in _PLAIN for v in attributes.values())


class _DirectEmitter:
    """Finished spans handed straight to an SDK tracer's span processors."""

    _BY_TRACER: weakref.WeakKeyDictionary[Tracer, _DirectEmitter | None] = weakref.WeakKeyDictionary()

    def __init__(
        self, tracer: Tracer, processor: SpanProcessor, limits: SpanLimits, scope: InstrumentationScope | None
    ) -> None:
        self._tracer, self._processor, self._limits, self._scope = tracer, processor, limits, scope

    @classmethod
    def of(cls, tracer: trace.Tracer) -> _DirectEmitter | None:
        """The emitter of an SDK tracer; None for another tracer, or an SDK release
        without the parts this relies on (its span limits and scope, checked here)."""
        if not isinstance(tracer, Tracer):
            return None
        try:
            return cls._BY_TRACER[tracer]
        except KeyError:
            pass
        limits = getattr(tracer, "_span_limits", None)
        scope = getattr(tracer, "_instrumentation_scope", None)
        processor = getattr(tracer, "span_processor", None)
        emitter = None
        if isinstance(limits, SpanLimits) and isinstance(processor, SpanProcessor):
            emitter = cls(tracer, processor, limits, scope if isinstance(scope, InstrumentationScope) else None)
        cls._BY_TRACER[tracer] = emitter
        return emitter

    def _fits(self, record: SpanRecord) -> bool:
        """Whether the SDK would keep the record as it is: within every count limit, no
        length limit set, every value of a plain type."""
        limits = self._limits
        if limits.max_attribute_length is not None or limits.max_span_attribute_length is not None:
            return False
        if limits.max_events is not None and len(record.events) > limits.max_events:
            return False
        if limits.max_links is not None and len(record.links) > limits.max_links:
            return False
        return (
            _plain(record.attributes, limits.max_span_attributes)
            and all(_plain(e.attributes, limits.max_event_attributes) for e in record.events)
            and all(_plain(a, limits.max_link_attributes) for _, a in record.links)
        )

    def emit(self, record: SpanRecord) -> bool:
        """Emit ``record``; False, having done nothing, when it is left to the SDK path."""
        if not self._fits(record):
            return False
        tracer = self._tracer
        enabled = getattr(tracer, "_is_enabled", None)
        if enabled is not None and not enabled():
            return True  # a disabled tracer records nothing, on either path
        links = _links(record)
        context = _parent(record)
        parent = trace.get_current_span(context).get_span_context()
        parent_context = parent if parent.is_valid else None
        trace_id = int(record.trace_id, 16)
        attributes = dict(record.attributes)
        sampling = tracer.sampler.should_sample(context, trace_id, record.name, SpanKind.INTERNAL, attributes, links)
        if sampling.decision is Decision.DROP:
            return True
        flags = TraceFlags.SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if parent_context is None:
            random = tracer.id_generator.is_trace_id_random()
        else:
            random = parent.trace_flags.random_trace_id
        if random:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_attributes = sampling.attributes if sampling.attributes is not None else {}
        if span_attributes is not attributes and not _plain(span_attributes, self._limits.max_span_attributes):
            return False  # a sampler's own attributes: the SDK path cleans them
        status = Status(StatusCode.UNSET)
        if record.status_code != STATUS_UNSET:
            message = record.status_message if record.status_code == STATUS_ERROR else None
            status = Status(StatusCode(record.status_code), message)
        self._processor.on_end(
            ReadableSpan(
                name=record.name,
                context=SpanContext(
                    trace_id, int(record.span_id, 16), is_remote=False,
                    trace_flags=TraceFlags(flags), trace_state=sampling.trace_state,
                ),
                parent=parent_context,
                resource=tracer.resource,
                attributes=dict(span_attributes),
                events=tuple(Event(e.name, dict(e.attributes), timestamp=e.time_ns) for e in record.events),
                links=tuple(links),
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=record.start_ns,
                end_time=record.end_ns,
                instrumentation_scope=self._scope,
            )
        )
        return True


def _links(record: SpanRecord) -> list[Link]:
    links = []
    for traceparent, attributes in record.links:
        linked = trace.get_current_span(_TRACEPARENT.extract({"traceparent": traceparent})).get_span_context()
        if linked.is_valid:
            links.append(Link(linked, dict(attributes)))
    return links
