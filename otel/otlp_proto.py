"""OTLP protobuf encoding of spans and log records, written directly from the SDK's objects.

The official exporters build one protobuf message object per span, event, attribute and
value (``opentelemetry.exporter.otlp.proto.common``) and then serialise them: at a few
spans and log records per job, building those objects was the largest single cost of a
worker's telemetry. This writes the same bytes straight from the SDK's objects, with the
parts that repeat in every batch (the resource, the scope, attribute keys) encoded once.

It follows the official encoder rule for rule (proto3: fields holding their default are
left out, a set message or ``oneof`` member is written even when empty; fields in
field-number order, as the protobuf runtime writes them), and
``tests/test_otlp_proto.py`` checks the result equals the official encoder's, parsed and
byte for byte, on many spans and records. Anything it does not handle the way the
official encoder would (a value of a type it does not know, an integer outside int64, a
string that is not valid UTF-8) raises :class:`Unsupported`, and the exporters of this
module then encode that batch with the official encoder, which decides.

:class:`OTLPSpanExporter` and :class:`OTLPLogExporter` are the SDK's OTLP/HTTP exporters
with only the serialisation replaced: endpoint, headers, timeout, compression, retries
with backoff, the size limit and the exporter's own metrics are theirs, configured by
the same ``OTEL_*`` variables.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import _log_exporter as _http_logs
from opentelemetry.exporter.otlp.proto.http import trace_exporter as _http_traces
from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanContext, SpanKind

__all__ = [
    "OTLPLogExporter",
    "OTLPSpanExporter",
    "Unsupported",
    "encode_logs_proto",
    "encode_spans_proto",
    "serialize_logs",
    "serialize_spans",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unsupported(ValueError):
    """A value this encoder leaves to the official one."""


# -- wire format ---------------------------------------------------------------------------

_VARINTS: Final = tuple(bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14))
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT32_MAX: Final = (1 << 32) - 1
_FIXED64: Final = struct.Struct("<Q").pack
_FIXED32: Final = struct.Struct("<I").pack
_DOUBLE: Final = struct.Struct("<d").pack
#: What encoding values the official encoder would refuse (or judge) raises here: text
#: that is not UTF-8, ids wider than their field, numbers outside their type.
_OUT_OF_RANGE: Final = (UnicodeEncodeError, OverflowError, struct.error)


def _varint(n: int) -> bytes:
    if n < 16384:
        return _VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64(n: int) -> bytes:
    """An int64 as a varint (negative numbers take ten bytes, two's complement)."""
    if n < 0:
        if n < _INT64_MIN:
            raise Unsupported("integer below int64")
        return _varint(n + (1 << 64))
    if n > _INT64_MAX:
        raise Unsupported("integer above int64")
    return _varint(n)


def _uint32(n: int) -> bytes:
    if not 0 <= n <= _UINT32_MAX:
        raise Unsupported("count outside uint32")
    return _varint(n)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return tag + _varint(len(payload)) + payload


def _utf8(text: str) -> bytes:
    # Lone surrogates raise UnicodeEncodeError: the encode_* functions leave such a
    # batch to the official encoder, which decides.
    return text.encode()


def _str_field(tag: bytes, text: str | None) -> bytes:
    """A proto3 string field: left out when None or empty."""
    return _field(tag, _utf8(text)) if text else b""


# -- common: AnyValue, KeyValue, attributes, resource, scope -------------------------------

_ANY_STRING, _ANY_BOOL, _ANY_INT = _tag(1, _LEN), _tag(2, _VARINT), _tag(3, _VARINT)
_ANY_DOUBLE, _ANY_ARRAY, _ANY_KVLIST, _ANY_BYTES = _tag(4, _I64), _tag(5, _LEN), _tag(6, _LEN), _tag(7, _LEN)
_VALUES = _tag(1, _LEN)  # ArrayValue.values, KeyValueList.values
_KV_KEY, _KV_VALUE = _tag(1, _LEN), _tag(2, _LEN)
_TRUE, _FALSE = _ANY_BOOL + b"\x01", _ANY_BOOL + b"\x00"


def _any(value: Any) -> bytes:
    """The body of an AnyValue message (``_encode_value``'s rules, in its order)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _field(_ANY_STRING, _utf8(value))
    if isinstance(value, int):
        return _ANY_INT + _int64(int(value))
    if isinstance(value, float):
        return _ANY_DOUBLE + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _field(_ANY_ARRAY, b"".join([_field(_VALUES, _any(v)) for v in value]))
    if isinstance(value, Mapping):
        pairs = b"".join([_field(_VALUES, _key_value(str(k), v)) for k, v in value.items()])
        return _field(_ANY_KVLIST, pairs)
    raise Unsupported(f"a value of type {type(value).__name__}")


#: Encoded ``key`` fields of KeyValue: attribute names repeat in every span and record.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS: Final = 4096


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(_KV_KEY, _utf8(key)) if key else b""
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[key] = encoded
    return encoded


def _key_value(key: str, value: Any) -> bytes:
    return _key(key) + _field(_KV_VALUE, _any(value))


def _items(attributes: Mapping[str, Any]) -> Any:
    """The items of attributes; the SDK's BoundedAttributes wraps a dict, read directly
    (its Mapping methods take a lock and a call per key)."""
    inner = getattr(attributes, "_dict", None)
    return (inner if isinstance(inner, dict) else attributes).items()


#: Encoded KeyValue messages (length-prefixed) of attributes whose value is a plain str,
#: int or bool, by (key, type, value): most attributes repeat from span to span
#: (project, module, status, reason). Cleared when full, so ids cannot grow it.
_PAIRS: dict[tuple[str, type, Any], bytes] = {}
_MAX_PAIRS: Final = 8192
#: Floats are left out: 0.0 and -0.0 are equal keys with different encodings.
_CACHED_TYPES: Final = frozenset({str, int, bool})


def _pair(key: str, value: Any, kind: type) -> bytes:
    """A KeyValue message with its length prefix. The common value types are written
    inline; anything else goes through :func:`_any`."""
    encoded_key = _KEYS.get(key)
    if encoded_key is None:
        encoded_key = _key(key)
    body: bytes
    if kind is str:
        text: bytes = value.encode()
        n = len(text)
        body = _ANY_STRING + (_VARINTS[n] if n < 16384 else _varint(n)) + text
    elif kind is int and 0 <= value < 16384:
        body = _ANY_INT + _VARINTS[value]
    elif kind is float:
        body = _ANY_DOUBLE + _DOUBLE(value)
    else:
        body = _any(value)
    n = len(body)
    pair = encoded_key + _KV_VALUE + (_VARINTS[n] if n < 16384 else _varint(n)) + body
    n = len(pair)
    return (_VARINTS[n] if n < 16384 else _varint(n)) + pair


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """A repeated KeyValue field (nothing when there are no attributes)."""
    if not attributes:
        return b""
    out = []
    pairs = _PAIRS
    for key, value in _items(attributes):
        kind = type(value)
        if kind in _CACHED_TYPES:
            cache_key = (key, kind, value)
            pair = pairs.get(cache_key)
            if pair is None:
                pair = _pair(key, value, kind)
                if len(pairs) >= _MAX_PAIRS:
                    pairs.clear()
                pairs[cache_key] = pair
        else:
            pair = _pair(key, value, kind)
        out.append(tag)
        out.append(pair)
    return b"".join(out)


_SCOPE_NAME, _SCOPE_VERSION, _SCOPE_ATTRIBUTES = _tag(1, _LEN), _tag(2, _LEN), _tag(3, _LEN)
_RESOURCE_ATTRIBUTES = _tag(1, _LEN)


class _Cache:
    """Encoded forms of objects that come back in every batch (resources, scopes), by
    identity; the objects are kept, so an id is never reused while cached."""

    def __init__(self, encode: Callable[[Any], bytes], size: int = 64) -> None:
        self._encode, self._size = encode, size
        self._found: dict[int, tuple[object, bytes]] = {}

    def __call__(self, obj: object) -> bytes:
        hit = self._found.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        encoded = self._encode(obj)
        if len(self._found) >= self._size:
            self._found.clear()
        self._found[id(obj)] = (obj, encoded)
        return encoded


def _encode_resource(resource: Resource) -> bytes:
    return _attributes(_RESOURCE_ATTRIBUTES, resource.attributes)


def _encode_scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        _str_field(_SCOPE_NAME, scope.name)
        + _str_field(_SCOPE_VERSION, scope.version)
        + _attributes(_SCOPE_ATTRIBUTES, scope.attributes)
    )


_resource_body = _Cache(_encode_resource)
_scope_body = _Cache(_encode_scope)


_Groups = list[tuple[Resource, list[tuple[InstrumentationScope | None, list[T]]]]]


def _grouped(items: Sequence[T], resource_of: Callable[[T], Resource], scope_of: Callable[[T], Any]) -> _Groups[T]:
    """Items by resource, then by scope, in order of first appearance, as the official
    encoders group them (equal resources, and equal scopes, share a group). Grouped by
    identity first (``Resource.__hash__`` serialises the attributes to JSON on every
    call); only when two distinct objects are equal is the official grouping redone."""
    by_id: dict[int, tuple[Resource, dict[int, tuple[Any, list[T]]]]] = {}
    for item in items:
        resource = resource_of(item)
        group = by_id.get(id(resource))
        if group is None:
            group = by_id[id(resource)] = (resource, {})
        scope = scope_of(item) or None
        scoped = group[1].get(id(scope))
        if scoped is None:
            scoped = group[1][id(scope)] = (scope, [])
        scoped[1].append(item)
    groups = list(by_id.values())
    if _any_equal([r for r, _ in groups]) or any(_any_equal([s for s, _ in scopes.values()]) for _, scopes in groups):
        return _grouped_by_equality(items, resource_of, scope_of)
    return [(resource, list(scopes.values())) for resource, scopes in groups]


def _any_equal(objects: Sequence[object]) -> bool:
    if len(objects) > 16:
        return True  # not worth comparing: let the official grouping decide
    return any(a == b for i, a in enumerate(objects) for b in objects[i + 1 :])


def _grouped_by_equality(
    items: Sequence[T], resource_of: Callable[[T], Resource], scope_of: Callable[[T], Any]
) -> _Groups[T]:
    grouped: dict[Resource, dict[Any, list[T]]] = {}
    for item in items:
        grouped.setdefault(resource_of(item), {}).setdefault(scope_of(item) or None, []).append(item)
    return [(resource, list(scopes.items())) for resource, scopes in grouped.items()]


def _envelope(
    groups: _Groups[T],
    encode: Callable[[T], bytes],
    item_tag: bytes,
) -> bytes:
    """ExportXServiceRequest { ResourceX { resource, ScopeX { scope, items, schema_url },
    schema_url } }: the same shape for spans and logs."""
    out = []
    for resource, scopes in groups:
        scoped = []
        for scope, members in scopes:
            body = _field(_SCOPE, _scope_body(scope)) + b"".join([_field(item_tag, encode(m)) for m in members])
            body += _str_field(_SCHEMA_URL, scope.schema_url if scope else None)
            scoped.append(_field(_SCOPED, body))
        body = _field(_RESOURCE, _resource_body(resource)) + b"".join(scoped)
        body += _str_field(_SCHEMA_URL, resource.schema_url)
        out.append(_field(_RESOURCE_ITEMS, body))
    return b"".join(out)


_RESOURCE_ITEMS = _tag(1, _LEN)  # Export*ServiceRequest.resource_{spans,logs}
_RESOURCE, _SCOPED, _SCHEMA_URL = _tag(1, _LEN), _tag(2, _LEN), _tag(3, _LEN)
_SCOPE = _tag(1, _LEN)


# -- spans ---------------------------------------------------------------------------------

_KIND: Final = {
    SpanKind.INTERNAL: _tag(6, _VARINT) + b"\x01",
    SpanKind.SERVER: _tag(6, _VARINT) + b"\x02",
    SpanKind.CLIENT: _tag(6, _VARINT) + b"\x03",
    SpanKind.PRODUCER: _tag(6, _VARINT) + b"\x04",
    SpanKind.CONSUMER: _tag(6, _VARINT) + b"\x05",
}
_SPAN_TRACE_ID, _SPAN_ID, _SPAN_TRACE_STATE, _SPAN_PARENT = _tag(1, _LEN), _tag(2, _LEN), _tag(3, _LEN), _tag(4, _LEN)
_SPAN_NAME, _SPAN_START, _SPAN_END = _tag(5, _LEN), _tag(7, _I64), _tag(8, _I64)
_SPAN_ATTRIBUTES, _SPAN_DROPPED_ATTRIBUTES, _SPAN_EVENTS = _tag(9, _LEN), _tag(10, _VARINT), _tag(11, _LEN)
_SPAN_DROPPED_EVENTS, _SPAN_LINKS, _SPAN_DROPPED_LINKS = _tag(12, _VARINT), _tag(13, _LEN), _tag(14, _VARINT)
_SPAN_STATUS, _SPAN_FLAGS = _tag(15, _LEN), _tag(16, _I32)
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRIBUTES, _EVENT_DROPPED = (
    _tag(1, _I64),
    _tag(2, _LEN),
    _tag(3, _LEN),
    _tag(4, _VARINT),
)
_LINK_TRACE_ID, _LINK_SPAN_ID, _LINK_ATTRIBUTES = _tag(1, _LEN), _tag(2, _LEN), _tag(4, _LEN)
_LINK_DROPPED, _LINK_FLAGS = _tag(5, _VARINT), _tag(6, _I32)
_STATUS_MESSAGE, _STATUS_CODE = _tag(2, _LEN), _tag(3, _VARINT)
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
#: The ``flags`` field of a span or link: whether its parent (linked) context is remote.
_FLAGS: Final = {
    False: _SPAN_FLAGS + _FIXED32(_HAS_IS_REMOTE),
    True: _SPAN_FLAGS + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE),
}
_LINK_FLAG_VALUES: Final = {
    False: _LINK_FLAGS + _FIXED32(_HAS_IS_REMOTE),
    True: _LINK_FLAGS + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE),
}


def _trace_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _fixed64(tag: bytes, n: int | None) -> bytes:
    """A fixed64 field, left out when None or 0."""
    if not n:
        return b""
    if not 0 <= n < 1 << 64:
        raise Unsupported("time outside uint64")
    return tag + _FIXED64(n)


def _count(tag: bytes, n: int) -> bytes:
    return tag + _uint32(n) if n else b""


def _trace_state(context: SpanContext) -> bytes:
    state: Any = context.trace_state  # typed TraceState, but None is possible (and encoded as none)
    if state is None:
        return b""
    return _str_field(_SPAN_TRACE_STATE, ",".join([f"{k}={v}" for k, v in state.items()]))


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    if context is None:
        raise Unsupported("a span without a context")
    parent = span.parent
    parts = [
        _SPAN_TRACE_ID + b"\x10" + _trace_id(context.trace_id),
        _SPAN_ID + b"\x08" + _span_id(context.span_id),
        _trace_state(context),
        _SPAN_PARENT + b"\x08" + _span_id(parent.span_id) if parent else b"",
        _str_field(_SPAN_NAME, span.name),
        _KIND[span.kind],
        _fixed64(_SPAN_START, span.start_time),
        _fixed64(_SPAN_END, span.end_time),
        _attributes(_SPAN_ATTRIBUTES, span.attributes),
        _count(_SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes),
    ]
    for event in span.events:
        body = (
            _fixed64(_EVENT_TIME, event.timestamp)
            + _str_field(_EVENT_NAME, event.name)
            + _attributes(_EVENT_ATTRIBUTES, event.attributes)
            + _count(_EVENT_DROPPED, event.dropped_attributes)
        )
        parts.append(_field(_SPAN_EVENTS, body))
    parts.append(_count(_SPAN_DROPPED_EVENTS, span.dropped_events))
    for link in span.links:
        linked = link.context
        body = (
            _LINK_TRACE_ID
            + b"\x10"
            + _trace_id(linked.trace_id)
            + _LINK_SPAN_ID
            + b"\x08"
            + _span_id(linked.span_id)
            + _attributes(_LINK_ATTRIBUTES, link.attributes)
            + _count(_LINK_DROPPED, link.dropped_attributes)
            + _LINK_FLAG_VALUES[bool(linked.is_remote)]
        )
        parts.append(_field(_SPAN_LINKS, body))
    parts.append(_count(_SPAN_DROPPED_LINKS, span.dropped_links))
    status = span.status
    if status is not None:
        code = status.status_code.value
        body = _str_field(_STATUS_MESSAGE, status.description) + (_STATUS_CODE + _varint(code) if code else b"")
        parts.append(_field(_SPAN_STATUS, body))
    parts.append(_FLAGS[bool(parent is not None and parent.is_remote)])
    return b"".join(parts)


_SPANS = _tag(2, _LEN)  # ScopeSpans.spans


def encode_spans_proto(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` as protobuf bytes; raises :class:`Unsupported`
    for what it leaves to the official encoder."""
    groups = _grouped(spans, lambda s: s.resource, lambda s: s.instrumentation_scope)
    try:
        return _envelope(groups, _span, _SPANS)
    except _OUT_OF_RANGE as exc:
        raise Unsupported(str(exc)) from exc


# -- logs ----------------------------------------------------------------------------------

_LOG_TIME, _LOG_SEVERITY, _LOG_SEVERITY_TEXT, _LOG_BODY = _tag(1, _I64), _tag(2, _VARINT), _tag(3, _LEN), _tag(5, _LEN)
_LOG_ATTRIBUTES, _LOG_DROPPED, _LOG_FLAGS, _LOG_TRACE_ID = _tag(6, _LEN), _tag(7, _VARINT), _tag(8, _I32), _tag(9, _LEN)
_LOG_SPAN_ID, _LOG_OBSERVED, _LOG_EVENT_NAME = _tag(10, _LEN), _tag(11, _I64), _tag(12, _LEN)


def _log(readable: ReadableLogRecord) -> bytes:
    record = readable.log_record
    trace_id, span_id = record.trace_id, record.span_id
    if trace_id is None or span_id is None or record.trace_flags is None:
        raise Unsupported("a record without trace ids or flags")
    severity = getattr(record.severity_number, "value", None)
    flags = int(record.trace_flags)
    if not 0 <= flags <= _UINT32_MAX:
        raise Unsupported("flags outside uint32")
    return b"".join(
        [
            _fixed64(_LOG_TIME, record.timestamp),
            _LOG_SEVERITY + _int64(severity) if severity else b"",
            _str_field(_LOG_SEVERITY_TEXT, record.severity_text),
            _field(_LOG_BODY, _any(record.body)),
            _attributes(_LOG_ATTRIBUTES, record.attributes),
            _count(_LOG_DROPPED, readable.dropped_attributes),
            _LOG_FLAGS + _FIXED32(flags) if flags else b"",
            _LOG_TRACE_ID + b"\x10" + _trace_id(trace_id) if trace_id else b"",
            _LOG_SPAN_ID + b"\x08" + _span_id(span_id) if span_id else b"",
            _fixed64(_LOG_OBSERVED, record.observed_timestamp),
            _str_field(_LOG_EVENT_NAME, record.event_name),
        ]
    )


_LOG_RECORDS = _tag(2, _LEN)  # ScopeLogs.log_records


def encode_logs_proto(batch: Sequence[ReadableLogRecord]) -> bytes:
    """An ``ExportLogsServiceRequest`` as protobuf bytes; raises :class:`Unsupported`
    for what it leaves to the official encoder."""
    groups = _grouped(batch, lambda r: r.resource, lambda r: r.instrumentation_scope)
    try:
        return _envelope(groups, _log, _LOG_RECORDS)
    except _OUT_OF_RANGE as exc:
        raise Unsupported(str(exc)) from exc


# -- with the official encoder as the fallback ---------------------------------------------


def serialize_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The request's bytes: this module's encoding, or the official one for a batch
    this module leaves to it."""
    try:
        return encode_spans_proto(spans)
    except Unsupported:
        return encode_spans(spans).SerializePartialToString()


def serialize_logs(batch: Sequence[ReadableLogRecord]) -> bytes:
    try:
        return encode_logs_proto(batch)
    except Unsupported:
        return encode_logs(batch).SerializeToString()


# -- exporters -----------------------------------------------------------------------------


class OTLPSpanExporter(_http_traces.OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, serialising with :func:`serialize_spans`.

    Only the encoding step of ``export`` differs (the rest is the SDK's own code path,
    on the SDK's own client: retries with backoff, timeout, compression, headers)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _http_traces._logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = serialize_spans(spans)
            except Exception as error:  # noqa: BLE001 - as the SDK: a batch that cannot be encoded fails
                _http_traces._logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            failure = _send(self, data, "span", result)
        return SpanExportResult.FAILURE if failure else SpanExportResult.SUCCESS


class OTLPLogExporter(_http_logs.OTLPLogExporter):
    """The SDK's OTLP/HTTP log exporter, serialising with :func:`serialize_logs`."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self._shutdown:
            _http_logs._logger.warning("Exporter already shutdown, ignoring batch")
            return LogRecordExportResult.FAILURE
        with self._metrics.export_operation(len(batch)) as result:
            try:
                data = serialize_logs(batch)
            except Exception as error:  # noqa: BLE001 - as the SDK: a batch that cannot be encoded fails
                _http_logs._logger.error("Failed to encode logs batch: %s", error)
                result.error = error
                return LogRecordExportResult.FAILURE
            failure = _send(self, data, "logs", result)
        return LogRecordExportResult.FAILURE if failure else LogRecordExportResult.SUCCESS


def _send(exporter: Any, data: bytes, kind: str, result: Any) -> bool:
    """The SDK exporters' size check and send, on their client; True when it failed."""
    if _is_request_too_large(data, exporter._max_request_size):
        log.warning(
            "Dropping %s batch: serialized size %d bytes exceeds max_request_size %d bytes.",
            kind,
            len(data),
            exporter._max_request_size,
        )
        result.error = RequestPayloadTooLargeError(
            f"Serialized {kind} request size {len(data)} bytes exceeds max_request_size "
            f"{exporter._max_request_size} bytes."
        )
        return True
    sent = exporter._client.export(data)
    if not sent.success:
        result.error = sent.error
        result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code} if sent.status_code is not None else None
        return True
    return False
