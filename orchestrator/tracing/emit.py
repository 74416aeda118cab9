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

A job's live spans (its phases and modules, :func:`start_live_span`) are started the same
way: the tracer's sampler decides, its processors are told at the start (with the span)
and given the finished span at the end, and the span in between (:class:`_LiveSpan`) does
what the SDK's span does on every path a job's span takes, without the SDK's
per-attribute cleaning of plain values. Tests compare each with the SDK's span.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, Tracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.tracing.records import STATUS_ERROR, STATUS_UNSET, SpanRecord
from otel.ids import forced_ids

__all__ = ["emit_spans", "start_live_span"]

_logger = logging.getLogger(__name__)

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


def _sampled_attributes(attributes: Mapping[str, Any] | None, limit: int | None) -> Any:
    """The attributes a sampler decided on, as the span keeps them: a dict while they are
    plain and within ``limit``, else cleaned by the SDK's ``BoundedAttributes`` (a sampler
    may add values of its own of any type)."""
    kept = dict(attributes or {})
    return kept if _plain(kept, limit) else BoundedAttributes(limit, kept, immutable=False)


class _DirectEmitter:
    """Finished spans handed straight to an SDK tracer's span processors."""

    _BY_TRACER: weakref.WeakKeyDictionary[Tracer, _DirectEmitter | None] = weakref.WeakKeyDictionary()

    def __init__(
        self, tracer: Tracer, processor: SpanProcessor, limits: SpanLimits, scope: InstrumentationScope | None
    ) -> None:
        self._tracer, self.processor, self.limits, self.scope = tracer, processor, limits, scope
        self.resource = tracer.resource

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
        limits = self.limits
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

    def start(
        self,
        name: str,
        attributes: Mapping[str, Any],
        context: otel_context.Context | None,
        start_ns: int | None,
        ids: tuple[int, int] | None,
    ) -> trace.Span | None:
        """A live span started as the SDK's tracer starts one (its sampler deciding, its
        processors told); None, having done nothing, when it is left to the SDK."""
        limits = self.limits
        if limits.max_attribute_length is not None or limits.max_span_attribute_length is not None:
            return None
        if not _plain(attributes, limits.max_span_attributes):
            return None
        tracer = self._tracer
        enabled = getattr(tracer, "_is_enabled", None)
        if enabled is not None and not enabled():
            return None
        parent = trace.get_current_span(context).get_span_context()
        parent_context = parent if parent.is_valid else None
        if parent_context is not None:
            trace_id = parent.trace_id
        else:
            trace_id = ids[0] if ids else tracer.id_generator.generate_trace_id()
        offered = dict(attributes)
        sampling = tracer.sampler.should_sample(context, trace_id, name, SpanKind.INTERNAL, offered, ())
        flags = _flags(tracer, sampling.decision, parent)
        span_id = ids[1] if ids else tracer.id_generator.generate_span_id()
        span_context = SpanContext(
            trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags), trace_state=sampling.trace_state
        )
        if sampling.decision is Decision.DROP:
            return trace.NonRecordingSpan(span_context)
        kept = _sampled_attributes(sampling.attributes, limits.max_span_attributes)
        span = _LiveSpan(name, span_context, parent_context, kept, self, start_ns or time.time_ns())
        self.processor.on_start(cast(Any, span), parent_context=context)
        return span

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
        flags = _flags(tracer, sampling.decision, parent)
        span_attributes = _sampled_attributes(sampling.attributes, self.limits.max_span_attributes)
        status = Status(StatusCode.UNSET)
        if record.status_code != STATUS_UNSET:
            message = record.status_message if record.status_code == STATUS_ERROR else None
            status = Status(StatusCode(record.status_code), message)
        self.processor.on_end(
            ReadableSpan(
                name=record.name,
                context=SpanContext(
                    trace_id, int(record.span_id, 16), is_remote=False,
                    trace_flags=TraceFlags(flags), trace_state=sampling.trace_state,
                ),
                parent=parent_context,
                resource=tracer.resource,
                attributes=span_attributes,
                events=tuple(Event(e.name, dict(e.attributes), timestamp=e.time_ns) for e in record.events),
                links=tuple(links),
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=record.start_ns,
                end_time=record.end_ns,
                instrumentation_scope=self.scope,
            )
        )
        return True


def _flags(tracer: Tracer, decision: Decision, parent: SpanContext) -> int:
    """A new span's W3C trace flags, as the SDK's tracer sets them: sampled by the
    decision; random-trace-id from the id generator for a root, from the parent else."""
    flags = TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
    random = tracer.id_generator.is_trace_id_random() if not parent.is_valid else parent.trace_flags.random_trace_id
    return flags | TraceFlags.RANDOM_TRACE_ID if random else flags


def _links(record: SpanRecord) -> list[Link]:
    links = []
    for traceparent, attributes in record.links:
        linked = trace.get_current_span(_TRACEPARENT.extract({"traceparent": traceparent})).get_span_context()
        if linked.is_valid:
            links.append(Link(linked, dict(attributes)))
    return links


# -- live spans ------------------------------------------------------------------------------


def start_live_span(
    tracer: trace.Tracer,
    name: str,
    *,
    attributes: Mapping[str, Any],
    context: otel_context.Context | None = None,
    start_ns: int | None = None,
    ids: tuple[int, int] | None = None,
) -> trace.Span:
    """Start a job's live span (a phase, a module): ``ids`` (trace id, span id) forced
    when given. On an SDK tracer within its limits, a :class:`_LiveSpan`; otherwise the
    tracer's own span, the same in every field it exports."""
    direct = _DirectEmitter.of(tracer)
    span = direct.start(name, attributes, context, start_ns, ids) if direct is not None else None
    if span is not None:
        return span
    with forced_ids(*ids) if ids else contextlib.nullcontext():
        return tracer.start_span(name, context=context, start_time=start_ns, attributes=dict(attributes))


class _LiveSpan(trace.Span, ReadableSpan):
    """A recording span with what the SDK's span does on the paths a job's spans take,
    without its per-attribute cleaning: attributes live in a dict while every value is of
    a plain type and their count within the limit (past that, the SDK's
    ``BoundedAttributes`` takes them over); events in the SDK's ``BoundedList``. At its
    end the finished span goes to the tracer's span processors, as the SDK's span goes."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        emitter: _DirectEmitter,
        start_ns: int,
    ) -> None:
        ReadableSpan.__init__(
            self,
            name=name,
            context=context,
            parent=parent,
            resource=emitter.resource,
            attributes=attributes,
            # Made at the first event or link (most live spans get none): two lists and
            # their locks fewer per span.
            events=(),
            links=(),
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            instrumentation_scope=emitter.scope,
        )
        self.limits, self._processor = emitter.limits, emitter.processor
        self._lock = threading.Lock()

    # -- what the API asks of a span ---------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Setting attribute on ended span.")
                return
            for key, value in attributes.items():
                self._put(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def _put(self, key: str, value: Any) -> None:
        current = self._attributes
        limit = self.limits.max_span_attributes
        if type(current) is dict and (
            type(value) not in _PLAIN or (limit is not None and key not in current and len(current) >= limit)
        ):
            current = self._attributes = BoundedAttributes(limit, current, immutable=False)
        assert current is not None
        cast(MutableMapping[str, Any], current)[key] = value

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        limits = self.limits
        if attributes and not _plain(attributes, limits.max_event_attributes):
            attributes = BoundedAttributes(limits.max_event_attributes, attributes, immutable=True)
        else:
            attributes = dict(attributes) if attributes else {}
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Tried calling _add_event on an ended span.")
                return
            if type(self._events) is not BoundedList:
                self._events = BoundedList(limits.max_events)
            cast("BoundedList[Event]", self._events).append(Event(name, attributes, timestamp))

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        if context is None or not context.is_valid:
            return
        link = Link(context, BoundedAttributes(self.limits.max_link_attributes, attributes, immutable=True))
        with self._lock:
            if self._end_time is None:
                if type(self._links) is not BoundedList:
                    self._links = BoundedList(self.limits.max_links)
                cast("BoundedList[Link]", self._links).append(link)

    def update_name(self, name: str) -> None:
        with self._lock:
            if self._end_time is None:
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: an OK status is final, an UNSET one is never set, a
        # description belongs to a (code, description) call only.
        with self._lock:
            if self._end_time is not None:
                return
            if self._status.status_code is StatusCode.OK:
                return
            if isinstance(status, Status):
                if status.status_code is not StatusCode.UNSET:
                    self._status = status
            elif status is not StatusCode.UNSET:
                self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, Any] = {
            EXCEPTION_TYPE: f"{module}.{qualname}" if module and module != "builtins" else qualname,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time.time_ns()
        self._processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._resource,
                attributes=self._attributes,
                events=self._events,
                links=self._links,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=self._end_time,
                instrumentation_scope=self._instrumentation_scope,
            )
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        if exc_val is not None and self.is_recording():  # as the SDK's span, used as a context manager
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)
