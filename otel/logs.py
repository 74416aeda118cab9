"""Structured logging on top of the standard library.

``logging`` stays the interface: modules log with ``logging.getLogger(__name__)`` and
users' own handlers keep working. What this module adds:

* :func:`event` writes a record with an event name from the vocabulary and context
  fields (``extra``) in one call;
* :class:`ContextFilter` copies the fields bound with :mod:`otel.context` and the ids
  of the active span onto every record;
* :class:`JsonFormatter` (JSON lines, the default when stderr is not a terminal) and
  :class:`ConsoleFormatter` (for humans);
* :func:`configure_logging` installs them on the ``orchestrator`` and ``otel`` loggers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import IO, Any, Final, Literal, Protocol

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import Logger as SdkLogger
from opentelemetry.sdk._logs import LogRecordDroppedAttributesWarning, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AnyValue

from otel import context
from otel.vocabulary import OperationEvent

__all__ = [
    "EVENT_KEY",
    "FIELDS_KEY",
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "LogRecordSink",
    "OtlpLogHandler",
    "RateLimitedLog",
    "configure_logging",
    "event",
    "lower_project_level",
    "record_fields",
]

#: The record attribute holding the event name. The OpenTelemetry logging handler
#: promotes this key to the log record's first-class ``event_name``.
EVENT_KEY: Final = "otel.event.name"
#: The record attribute holding the structured fields (see :func:`event`).
FIELDS_KEY: Final = "orchestrator_fields"
_TRACE_KEY: Final = "otelTraceID"
_SPAN_KEY: Final = "otelSpanID"
_OWN_KEYS: Final = frozenset({EVENT_KEY, FIELDS_KEY, _TRACE_KEY, _SPAN_KEY})

# Attributes every LogRecord has; anything else on a record is a structured field.
_STANDARD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

LOGGER_NAMES: Final = ("orchestrator", "otel", "benchmarks")
_thread_log = logging.getLogger("otel.threads")


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    message: str,
    /,
    *,
    exc_info: bool | BaseException | None = None,
    **fields: Any,
) -> None:
    """Log ``message`` as event ``name`` with structured ``fields``."""
    if not logger.isEnabledFor(level):
        return
    # Fields travel in one record attribute: names such as "module" are taken by
    # LogRecord's own attributes and could not be passed through ``extra`` directly.
    extra = {FIELDS_KEY: {k: v for k, v in fields.items() if v is not None}, EVENT_KEY: name}
    # The record is made here for the caller's frame (what ``stacklevel=2`` would find)
    # and handed to the logger as ``Logger._log`` does, without logging's walk up the
    # stack (findCaller), one of the larger costs of a record.
    caller = sys._getframe(1)
    if logging._srcfile:  # None when an application turned caller lookup off
        where = (caller.f_code.co_filename, caller.f_lineno, caller.f_code.co_name)
    else:
        where = ("(unknown file)", 0, "(unknown function)")
    error: Any = None
    if isinstance(exc_info, BaseException):
        error = (type(exc_info), exc_info, exc_info.__traceback__)
    elif exc_info:
        error = sys.exc_info()
    record = logger.makeRecord(logger.name, level, where[0], where[1], message, (), error, where[2], extra)
    logger.handle(record)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: ours, and any other ``extra`` a library gave."""
    found = {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD_ATTRS and k not in _OWN_KEYS and not k.startswith("_")
    }
    found.update(getattr(record, FIELDS_KEY, None) or {})
    return found


class ContextFilter(logging.Filter):
    """Adds bound context fields and the active span's ids to each record.

    Fields given explicitly with ``extra`` win over bound ones. The OTLP handler takes
    the ids from the active context itself, so it uses ``trace_ids=False``.
    """

    def __init__(self, *, trace_ids: bool = True) -> None:
        super().__init__()
        self._trace_ids = trace_ids

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__
        bound = context.current_fields()
        if bound:
            attrs[FIELDS_KEY] = {**bound, **(attrs.get(FIELDS_KEY) or {})}
        if self._trace_ids and _TRACE_KEY not in attrs:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                attrs[_TRACE_KEY] = format(span_context.trace_id, "032x")
                attrs[_SPAN_KEY] = format(span_context.span_id, "016x")
        return True


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


#: One encoder for every record (``json.dumps`` with options builds one per call).
_JSON: Final = json.JSONEncoder(default=_json_default, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, message, fields, trace ids."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, EVENT_KEY, None),
            "message": record.getMessage(),
        }
        payload.update(record_fields(record))
        trace_id = getattr(record, _TRACE_KEY, None)
        if trace_id:
            payload["trace_id"] = trace_id
            payload["span_id"] = getattr(record, _SPAN_KEY, None)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(payload)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL event message key=value ...`` for people at a terminal."""

    _COLORS: Final[Mapping[int, str]] = {
        logging.DEBUG: "\x1b[2m",
        logging.INFO: "\x1b[36m",
        logging.WARNING: "\x1b[33m",
        logging.ERROR: "\x1b[31m",
        logging.CRITICAL: "\x1b[1;31m",
    }

    def __init__(self, *, color: bool) -> None:
        super().__init__()
        self._color = color

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = record.levelname.ljust(7)
        if self._color:
            level = f"{self._COLORS.get(record.levelno, '')}{level}\x1b[0m"
        name = getattr(record, EVENT_KEY, None) or record.name
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = f"{stamp} {level} {name:<24} {record.getMessage()}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class LogRecordSink(Protocol):
    """Where :class:`OtlpLogHandler` can hand finished records directly (a batch
    processor's queue), skipping the SDK logger's per-record pipeline."""

    def emit_readable(self, record: ReadableLogRecord) -> None: ...


#: Attribute values the exporters encode as they are; anything else goes through the
#: SDK's cleaning (``BoundedAttributes``), as on the SDK's own path.
_PLAIN_VALUES: Final = frozenset({str, bool, int, float})
#: How many logger names' origins (resource, scope) the direct path keeps.
_ORIGINS_KEPT: Final = 256
_NO_CONTEXT: Final = Context()


class OtlpLogHandler(LoggingHandler):
    """The logging instrumentation's OTLP handler, with our structured fields (event
    name, job_id, module, ...) flattened into the log record's attributes.

    Given a ``sink``, a record goes straight from ``logging`` to the sink as the
    batch processor would have queued it: the same OTLP log record (the
    instrumentation's translation, the logger's resource and scope), without the SDK
    logger's intermediate record, its attribute container and the processor's copy,
    which cost about as much as everything else a lifecycle record does. Attributes
    that need the SDK's cleaning or limits (a value of another type, a count or length
    limit from ``OTEL_LOGRECORD_ATTRIBUTE_*``/``OTEL_ATTRIBUTE_*``) still get it.
    """

    #: Not flushed by ``logging.shutdown`` at exit: its flush starts a thread, which
    #: Python 3.12 refuses at interpreter shutdown ("can't create new thread", printed as
    #: an ignored exception after every command). The logger provider is flushed and shut
    #: down by :meth:`otel.setup.Telemetry.shutdown`, or by the SDK's own exit hook.
    flushOnClose = False

    def __init__(
        self,
        level: int = logging.NOTSET,
        logger_provider: Any = None,
        *,
        sink: LogRecordSink | None = None,
        limits: LogRecordLimits | None = None,
    ) -> None:
        super().__init__(level=level, logger_provider=logger_provider)
        self._sink = sink
        self._limits = limits if limits is not None else LogRecordLimits()
        self._origins: dict[str, tuple[Resource, InstrumentationScope | None] | None] = {}

    def _get_attributes(self, record: logging.LogRecord) -> tuple[dict[str, AnyValue], str | None]:
        attributes, event_name = super()._get_attributes(record)
        for key in _OWN_KEYS:
            attributes.pop(key, None)
        for key, value in (getattr(record, FIELDS_KEY, None) or {}).items():
            attributes[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
        return attributes, event_name

    def emit(self, record: logging.LogRecord) -> None:
        sink = self._sink
        if sink is None or self._is_emitting.get():
            super().emit(record)  # the SDK's path (and its guard against recursive logging)
            return
        origin = self._origin(record.name)
        if origin is None:  # not the SDK's logger (a disabled provider's no-op one)
            super().emit(record)
            return
        token = self._is_emitting.set(True)
        try:
            api_record = self._translate(record)
            # What the batch processor does to its copy: the record must not keep the
            # context (and every object it holds) alive while it waits for export.
            api_record.context = _NO_CONTEXT
            api_record.attributes = self._bounded(api_record.attributes)
            sink.emit_readable(
                ReadableLogRecord(
                    log_record=api_record, resource=origin[0], instrumentation_scope=origin[1], limits=self._limits
                )
            )
        finally:
            self._is_emitting.reset(token)

    def _origin(self, name: str) -> tuple[Resource, InstrumentationScope | None] | None:
        """The resource and scope of the provider's logger called ``name``, as the SDK's
        path would find them; None when that is not an SDK logger."""
        try:
            return self._origins[name]
        except KeyError:
            pass
        logger = self._logger_provider.get_logger(name)
        origin = (logger.resource, logger.instrumentation_scope) if isinstance(logger, SdkLogger) else None
        if len(self._origins) >= _ORIGINS_KEPT:  # logger names made up at run time
            self._origins.clear()
        self._origins[name] = origin
        return origin

    def _bounded(self, attributes: Any) -> Any:
        limits = self._limits
        if not attributes:
            return attributes
        if (
            limits.max_log_record_attribute_length is None
            and (limits.max_log_record_attributes is None or len(attributes) <= limits.max_log_record_attributes)
            and all(type(value) in _PLAIN_VALUES for value in attributes.values())
        ):
            return attributes
        bounded = BoundedAttributes(
            maxlen=limits.max_log_record_attributes,
            attributes=attributes,
            immutable=False,
            max_value_len=limits.max_log_record_attribute_length,
        )
        if bounded.dropped:  # as the SDK's record warns
            warnings.warn("Log record attributes were dropped due to limits", LogRecordDroppedAttributesWarning, 2)
        return bounded


class RateLimitedLog:
    """Lets one record through per ``interval`` seconds and counts the ones held back.

    Used for degraded paths that can repeat quickly (telemetry export failures, a
    store that is down) so that they are logged once with context, not as a flood.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = -float("inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


LogFormat = Literal["auto", "json", "console"]


def configure_logging(
    level: int | str = logging.INFO,
    fmt: LogFormat = "auto",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install one stream handler with the context filter on the root logger.

    The project's loggers log at ``level``; other libraries' records pass at warning
    and above. Idempotent: calling it again replaces the handler it installed before.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)  # loggers may pass more (e.g. info for OTLP export): see lower_project_level
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter(color=stream.isatty()))
    handler.addFilter(ContextFilter())
    handler.set_name("orchestrator-stream")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "orchestrator-stream"]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in LOGGER_NAMES:
        logging.getLogger(name).setLevel(level)
    return handler


def log_thread_exceptions() -> None:
    """Make an exception no thread handled a log record (:func:`_log_thread_exception`).
    For a program's entry point: it replaces the process's ``threading.excepthook``
    (a test runner's own, say), so a library's setup does not call it."""
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception a thread did not handle (a thread a module started, say) is one
    structured ERROR record naming the thread, with the traceback in its ``exception``
    field, instead of a raw traceback in the middle of the JSON log."""
    if args.exc_type is SystemExit:  # as the default hook: a thread's exit, not an error
        return
    name = args.thread.name if args.thread is not None else "?"
    error = args.exc_value if args.exc_value is not None else args.exc_type()
    if error.__traceback__ is None and args.exc_traceback is not None:
        error = error.with_traceback(args.exc_traceback)
    event(
        _thread_log,
        logging.ERROR,
        OperationEvent.ERROR,
        f"unhandled {args.exc_type.__name__} in thread {name!r}",
        exc_info=error,
        operation="thread",
        error_category="internal",
        error_type=args.exc_type.__name__,
        thread=name,
    )


def lower_project_level(level: int) -> None:
    """Let the project's loggers emit at least ``level`` (another handler, such as the
    OTLP export, wants more than the terminal shows; each handler filters its own)."""
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
