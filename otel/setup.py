"""OpenTelemetry providers, configured from the standard ``OTEL_*`` environment variables.

Where telemetry goes:

* ``OTEL_SDK_DISABLED=true``: nowhere (the API's no-op providers); logs still go to stderr.
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or a per-signal ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``)
  set: OTLP, over gRPC or HTTP/protobuf per ``OTEL_EXPORTER_OTLP_PROTOCOL``; the
  exporters read their endpoint, headers, timeout and compression from the environment.
* otherwise: the embedded default, OTLP/JSON files in ``<data dir>/telemetry``.
* ``OTEL_METRICS_EXPORTER=prometheus`` adds a Prometheus scrape endpoint
  (``OTEL_EXPORTER_PROMETHEUS_HOST``/``_PORT``) for metrics.

Export never slows or breaks job processing: batch processors with bounded queues run
in background threads, export failures are counted and warned about at a limited rate,
and :meth:`Telemetry.shutdown` flushes within a bounded time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel import files, logs
from otel.environment import EXPORT_QUEUE_SIZE, TelemetryConfigError, check_environment, export_queue_size
from otel.ids import JobIdGenerator
from otel.tallies import TalliedReader, TallyBoard, reader_temporality, register_board
from otel.vocabulary import INSTRUMENTATION_SCOPE, Metric, OperationEvent

__all__ = [
    "ALWAYS_SANITIZED_HEADERS",
    "HTTP_SERVER_METRIC_ATTRIBUTES",
    "SpanExportListener",
    "SpanExportObserver",
    "Telemetry",
    "http_server_views",
    "observed_span_pipeline",
    "sanitized_header_fields",
    "setup_telemetry",
    "span_export_observer",
]

log = logging.getLogger(__name__)

Mode = Literal["disabled", "otlp", "files"]
_TRUE: Final = {"1", "true", "yes", "on"}
_SIGNALS: Final = ("traces", "metrics", "logs")


@dataclass
class Telemetry:
    """The configured providers. ``shutdown`` flushes and stops them, bounded in time."""

    mode: Mode
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    log_handler: logging.Handler | None = None
    sampler: Sampler | None = None
    telemetry_dir: Path | None = None
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SIGNALS, 0))
    failure_counter: Any = None
    _closed: bool = False

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered; never blocks longer than ~``timeout_s`` in all."""
        millis = int(timeout_s * 1000)
        _bounded(
            [lambda p=p: p.force_flush(millis) for p in self._providers()],  # type: ignore[misc]
            self._budget(timeout_s),
        )

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and shut every provider down; never blocks longer than ~``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
        _bounded([p.shutdown for p in self._providers()], self._budget(timeout_s))

    def _providers(self) -> list[Any]:
        return [p for p in (self.tracer_provider, self.logger_provider, self.meter_provider) if p is not None]

    def _budget(self, timeout_s: float) -> float:
        """Once exports have failed (a collector down or refusing), waiting for the
        retries of the last batches would only delay exit: give them a second."""
        return min(timeout_s, 1.0) if any(self.failures.values()) else timeout_s


def _bounded(fns: Sequence[Callable[[], Any]], timeout_s: float) -> None:
    """Run ``fns`` in parallel daemon threads and stop waiting after ``timeout_s`` in
    all: an exporter stuck on an unreachable collector must not hold the process."""
    threads = [threading.Thread(target=fn, name="otel-shutdown", daemon=True) for fn in fns]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


#: Attributes HTTP server metrics keep: the route template (``http.route``; the legacy
#: ``http.target`` of a metric point is the template too), the method (normalised to the
#: known ones, else ``_OTHER``), the status code (a value our server chooses from a small
#: set), the scheme and the error type. Everything a client writes freely (Host header,
#: server name, peer address, raw path, user agent) is dropped: cardinality never depends
#: on client input.
HTTP_SERVER_METRIC_ATTRIBUTES: Final = frozenset(
    {
        "http.route",
        "http.target",
        "http.request.method",
        "http.method",
        "http.response.status_code",
        "http.status_code",
        "url.scheme",
        "http.scheme",
        "error.type",
    }
)
_METHOD_ATTRIBUTES: Final = frozenset({"http.request.method", "http.method"})
#: Request and response headers whose values never reach telemetry, whatever
#: OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* asks for (regular expressions, searched).
ALWAYS_SANITIZED_HEADERS: Final = ("authorization", "cookie", "x-api-key", "token", "secret")


def http_server_views(env: Mapping[str, str] | None = None) -> list[View]:
    """Metric views bounding every ``http.server.*`` instrument's attributes. With
    OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS the instrumentation records raw
    methods, which a client chooses: the method is dropped then."""
    env = os.environ if env is None else env
    keys = set(HTTP_SERVER_METRIC_ATTRIBUTES)
    if _env("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS", env):
        keys -= _METHOD_ATTRIBUTES
    return [View(instrument_name="http.server.*", attribute_keys=keys)]


def sanitized_header_fields(env: Mapping[str, str] | None = None) -> list[str]:
    """The header patterns to redact in captured headers: the user's
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS plus ours."""
    env = os.environ if env is None else env
    own = [f.strip() for f in _env("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", env).split(",")]
    return list(dict.fromkeys([*(f for f in own if f), *ALWAYS_SANITIZED_HEADERS]))


def _env(name: str, env: Mapping[str, str]) -> str:
    return env.get(name, "").strip()


def _otlp_wanted(signal: str, env: Mapping[str, str]) -> bool:
    return bool(_env("OTEL_EXPORTER_OTLP_ENDPOINT", env) or _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", env))


def _protocol(signal: str, env: Mapping[str, str]) -> str:
    return (
        _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", env)
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL", env)
        or "http/protobuf"
    )


def setup_telemetry(
    *,
    service_version: str,
    telemetry_dir: Path | None,
    env: Mapping[str, str] | None = None,
    install_log_handler: bool = True,
    metric_interval_s: float | None = None,
) -> Telemetry:
    """Configure tracer, meter and logger providers from the environment and make them global."""
    env = os.environ if env is None else env
    if _env("OTEL_SDK_DISABLED", env).lower() in _TRUE:
        return Telemetry(mode="disabled")
    check_environment(env)  # a value the SDK would raise on: one typed error naming it

    resource = Resource.create({SERVICE_VERSION: service_version, SERVICE_INSTANCE_ID: str(uuid.uuid4())})
    service_name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not _env("OTEL_SERVICE_NAME", env) and service_name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "orchestrator"}))

    otlp = any(_otlp_wanted(s, env) for s in _SIGNALS)
    mode: Mode = "otlp" if otlp else "files"
    telemetry = Telemetry(mode=mode, telemetry_dir=None if otlp else telemetry_dir)

    def counted(signal: str) -> Callable[[bool], None]:
        warn = logs.RateLimitedLog(30.0)

        def report(ok: bool) -> None:
            if ok:
                return
            telemetry.failures[signal] += 1
            if telemetry.failure_counter is not None:
                telemetry.failure_counter.add(1, {"signal": signal})
            if warn.ready():
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.TELEMETRY_EXPORT_FAILED,
                    f"could not export {signal}; telemetry is being dropped, jobs are not affected",
                    signal=signal,
                    failures=telemetry.failures[signal],
                    suppressed=warn.take_suppressed(),
                )

        return report

    span_exporter, log_exporter, metric_exporter = _exporters(env, telemetry_dir, otlp)

    # shutdown_on_exit=False: Telemetry.shutdown does it, bounded in time (the SDK's own
    # exit hook would shut down a second time and warn).
    tracer_provider = TracerProvider(resource=resource, id_generator=JobIdGenerator(), shutdown_on_exit=False)
    # Observed: what the exporter confirmed is what a job's trace counts as delivered.
    observed_span_pipeline(
        tracer_provider, _CountingSpanExporter(span_exporter, counted("traces")),
        max_queue_size=export_queue_size(env, "OTEL_BSP") or EXPORT_QUEUE_SIZE,
    )
    telemetry.tracer_provider = tracer_provider
    telemetry.sampler = tracer_provider.sampler

    log_limits = LogRecordLimits()  # from OTEL_LOGRECORD_ATTRIBUTE_* / OTEL_ATTRIBUTE_*
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False, log_record_limits=log_limits)
    log_processor = _DirectBatchLogRecordProcessor(
        _CountingLogExporter(log_exporter, counted("logs")),
        max_queue_size=export_queue_size(env, "OTEL_BLRP") or EXPORT_QUEUE_SIZE,
    )
    logger_provider.add_log_record_processor(log_processor)
    telemetry.logger_provider = logger_provider

    readers: list[MetricReader] = []
    interval = metric_interval_s if metric_interval_s is not None else _metric_interval(env)
    readers.append(
        _TalliedPeriodicReader(
            _CountingMetricExporter(metric_exporter, counted("metrics")), export_interval_millis=interval * 1000
        )
    )
    if "prometheus" in _env("OTEL_METRICS_EXPORTER", env).split(","):
        readers.append(_prometheus_reader(env))
    exemplar_filter = _EXEMPLAR_FILTERS.get(_env("OTEL_METRICS_EXEMPLAR_FILTER", env) or "trace_based")
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        views=http_server_views(env),  # http.server.* only: none applies to the tallied histograms
        shutdown_on_exit=False,
        exemplar_filter=exemplar_filter() if exemplar_filter else None,  # None: the SDK's own choice (and error)
    )
    telemetry.meter_provider = meter_provider
    _tally_histograms(meter_provider, readers, resource, exemplar_filter)

    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    set_logger_provider(logger_provider)
    _quiet_exporter_logs()
    _instrument_asyncio()
    if install_log_handler:
        # Lifecycle milestones are info: export them even when the terminal shows less.
        export_level = logging.getLevelName((_env("OTEL_PYTHON_LOG_LEVEL", env) or "info").upper())
        export_level = export_level if isinstance(export_level, int) else logging.INFO
        # Records go from the handler straight to the batch processor's queue (see
        # OtlpLogHandler): the provider has that one processor, so nothing is bypassed.
        handler = logs.OtlpLogHandler(
            logger_provider=logger_provider, level=export_level, sink=log_processor.sink(), limits=log_limits
        )
        logs.lower_project_level(export_level)
        handler.addFilter(logs.ContextFilter(trace_ids=False))
        handler.addFilter(_NotOpenTelemetry())
        handler.set_name("orchestrator-otlp")
        logging.getLogger().addHandler(handler)
        telemetry.log_handler = handler
    telemetry.failure_counter = meter_provider.get_meter(INSTRUMENTATION_SCOPE).create_counter(
        Metric.TELEMETRY_EXPORT_FAILURES.name,
        unit=Metric.TELEMETRY_EXPORT_FAILURES.unit,
        description=Metric.TELEMETRY_EXPORT_FAILURES.description,
    )
    return telemetry


#: OTEL_METRICS_EXEMPLAR_FILTER's values (the SDK's), and the filter each names.
_EXEMPLAR_FILTERS: Final[Mapping[str, type[ExemplarFilter]]] = {
    "trace_based": TraceBasedExemplarFilter,
    "always_on": AlwaysOnExemplarFilter,
    "always_off": AlwaysOffExemplarFilter,
}


class _TalliedPeriodicReader(TalliedReader, PeriodicExportingMetricReader):
    pass


def _tally_histograms(
    meter_provider: MeterProvider,
    readers: Sequence[MetricReader],
    resource: Resource,
    exemplar_filter: type[ExemplarFilter] | None,
) -> None:
    """Keep the job histograms in process (:class:`otel.tallies.HistogramTally`) when
    every reader reads them as the SDK's default histogram and can take them."""
    temporalities = [reader_temporality(reader) for reader in readers]
    if exemplar_filter is None or not all(isinstance(r, TalliedReader) for r in readers):
        return
    known = [t for t in temporalities if t is not None]
    if len(known) != len(readers):
        return
    board = TallyBoard(resource, InstrumentationScope(INSTRUMENTATION_SCOPE), exemplar_filter(), known)
    for index, reader in enumerate(readers):
        if isinstance(reader, TalliedReader):
            reader.read_tallies(board, index)
    register_board(meter_provider, board)


def _metric_interval(env: Mapping[str, str]) -> float:
    raw = _env("OTEL_METRIC_EXPORT_INTERVAL", env)
    try:
        return max(0.1, float(raw) / 1000) if raw else 15.0
    except ValueError:
        return 15.0


def _exporters(
    env: Mapping[str, str], telemetry_dir: Path | None, otlp: bool
) -> tuple[SpanExporter, LogRecordExporter, MetricExporter]:
    if not otlp:
        folder = telemetry_dir or Path(".orchestrator/telemetry")
        return (
            files.FileSpanExporter(files.JsonlWriter(folder / files.SIGNAL_FILES["traces"])),
            files.FileLogExporter(files.JsonlWriter(folder / files.SIGNAL_FILES["logs"])),
            files.FileMetricExporter(files.JsonlWriter(folder / files.SIGNAL_FILES["metrics"])),
        )
    grpc = {s: _protocol(s, env) == "grpc" for s in _SIGNALS}
    if grpc["traces"]:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        spans: SpanExporter = GrpcSpans()
    else:
        # The SDK's HTTP exporter with the spans encoded directly (otel/otlp_proto.py);
        # gRPC keeps the official encoder (its stub serialises the message objects).
        from otel.otlp_proto import OTLPSpanExporter as HttpSpans

        spans = HttpSpans()
    if grpc["logs"]:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs

        log_exporter: LogRecordExporter = GrpcLogs()
    else:
        from otel.otlp_proto import OTLPLogExporter as HttpLogs

        log_exporter = HttpLogs()
    if grpc["metrics"]:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        metric_exporter: MetricExporter = GrpcMetrics()
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

        metric_exporter = HttpMetrics()
    return spans, log_exporter, metric_exporter


def _prometheus_reader(env: Mapping[str, str]) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    class TalliedPrometheusReader(TalliedReader, PrometheusMetricReader):
        pass

    host = _env("OTEL_EXPORTER_PROMETHEUS_HOST", env) or "localhost"
    port = int(_env("OTEL_EXPORTER_PROMETHEUS_PORT", env) or 9464)  # checked by check_environment
    try:
        start_http_server(port=port, addr=host)
    except OSError as exc:  # the port taken, the host not resolved or not this machine's
        raise TelemetryConfigError(
            "OTEL_EXPORTER_PROMETHEUS_PORT",
            f"cannot serve Prometheus metrics on {host}:{port} (OTEL_EXPORTER_PROMETHEUS_HOST, "
            f"OTEL_EXPORTER_PROMETHEUS_PORT): {exc.strerror or exc}",
        ) from None
    logs.event(log, logging.INFO, OperationEvent.TELEMETRY_PROMETHEUS, f"metrics exposed on http://{host}:{port}/metrics")
    return TalliedPrometheusReader()


class _DirectBatchLogRecordProcessor(BatchLogRecordProcessor):
    """The SDK's batch processor, also taking finished records directly into its queue
    (:class:`otel.logs.LogRecordSink`, for :class:`otel.logs.OtlpLogHandler`)."""

    def sink(self) -> logs.LogRecordSink | None:
        """Self when the SDK's processor has the queue this relies on (a private part of
        it, checked here so that another SDK release falls back to the SDK's own path)."""
        queue = getattr(self, "_batch_processor", None)
        return self if callable(getattr(queue, "emit", None)) else None

    def emit_readable(self, record: ReadableLogRecord) -> None:
        self._batch_processor.emit(record)


class _NotOpenTelemetry(logging.Filter):
    """Keeps the SDK's own records (export trouble) out of the OTLP log pipeline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def _quiet_exporter_logs() -> None:
    """Exporters log every failed batch (with a traceback, on retry); we count and warn
    at a limited rate instead, so only their critical records pass."""
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.CRITICAL)


def _instrument_asyncio() -> None:
    """Asyncio instrumentation for its metrics (asyncio.process.duration/created). It
    traces only the coroutines and to_thread functions named in
    OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE / _TO_THREAD_FUNCTION_NAMES_TO_TRACE,
    which are empty by default: no span per task, so no junk spans."""
    from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor

    instrumentor = AsyncioInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


# -- what the span pipeline delivered ---------------------------------------------------


class SpanExportListener(Protocol):
    """Told of every span a provider's pipeline is given, and of each export's outcome."""

    def span_ended(self, span: ReadableSpan) -> None: ...

    def spans_exported(self, spans: Sequence[ReadableSpan], ok: bool) -> None: ...


class SpanExportObserver:
    """What a tracer provider's span pipeline did with the spans it was given: each span
    as it enters the batch processor, then each batch with whether the exporter confirmed
    it. A span neither confirmed nor failed was dropped (a full queue) or is still on its
    way. Listeners run on the caller's thread (the export thread for batches): they must
    be quick and thread-safe."""

    def __init__(self, processor: SpanProcessor | None = None) -> None:
        self._listeners: tuple[SpanExportListener, ...] = ()
        self._lock = threading.Lock()
        self.processor = processor

    def add_listener(self, listener: SpanExportListener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: SpanExportListener) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    def ended(self, span: ReadableSpan) -> None:
        for listener in self._listeners:
            _quietly(listener.span_ended, span)

    def exported(self, spans: Sequence[ReadableSpan], ok: bool) -> None:
        for listener in self._listeners:
            _quietly(listener.spans_exported, spans, ok)

    def force_flush(self, timeout_millis: int = 5000) -> bool:
        """Export what the pipeline holds now (blocking, bounded)."""
        return self.processor.force_flush(timeout_millis) if self.processor is not None else True


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a listener's bug must not break the export thread
        log.exception("span export listener failed")


_OBSERVERS: weakref.WeakKeyDictionary[TracerProvider, SpanExportObserver] = weakref.WeakKeyDictionary()


def observed_span_pipeline(
    tracer_provider: TracerProvider, exporter: SpanExporter, **batch_options: Any
) -> SpanExportObserver:
    """Add a batch span processor over ``exporter`` to ``tracer_provider``, observed: the
    returned observer (also :func:`span_export_observer` of the provider) tells its
    listeners what entered the pipeline and what the exporter confirmed. The exporter is
    wrapped, whatever it is."""
    observer = SpanExportObserver()
    batch = BatchSpanProcessor(_ObservedSpanExporter(exporter, observer), **batch_options)
    observer.processor = _ObservedSpanProcessor(batch, observer)
    tracer_provider.add_span_processor(observer.processor)
    _OBSERVERS[tracer_provider] = observer
    return observer


def span_export_observer(tracer_provider: object) -> SpanExportObserver | None:
    """The observer of a provider's pipeline built by :func:`observed_span_pipeline`."""
    if isinstance(tracer_provider, TracerProvider):
        return _OBSERVERS.get(tracer_provider)
    return None


class _ObservedSpanProcessor(SpanProcessor):
    def __init__(self, inner: SpanProcessor, observer: SpanExportObserver) -> None:
        self._inner, self._observer = inner, observer

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._observer.ended(span)  # before the processor queues it: its export comes after
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _ObservedSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, observer: SpanExportObserver) -> None:
        self._inner, self._observer = inner, observer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
        self._observer.exported(spans, result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, report: Callable[[bool], None]) -> None:
        self._inner, self._report = inner, report

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
        self._report(result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, report: Callable[[bool], None]) -> None:
        self._inner, self._report = inner, report

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self._inner.export(batch)
        except Exception:  # noqa: BLE001 - an exporter bug must not kill the export thread
            result = LogRecordExportResult.FAILURE
        self._report(result is LogRecordExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


class _CountingMetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, report: Callable[[bool], None]) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner, self._report = inner, report

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis)
        except Exception:  # noqa: BLE001 - an exporter bug must not kill the export thread
            result = MetricExportResult.FAILURE
        self._report(result is MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis)
