"""Test helpers (not tests): a JobTelemetry on in-memory OpenTelemetry SDK providers,
span lookup and tree helpers, fake analysis modules and a one-job runner.

Every harness has its own providers (nothing global is set), so tests stay isolated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, NumberDataPoint
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from orchestrator.bootstrap import App
from orchestrator.domain import Job, ModuleError
from orchestrator.modules.base import ModuleContext
from orchestrator.telemetry import JobTelemetry
from orchestrator.usecases.execute import JobControl
from otel import logs
from otel.ids import JobIdGenerator
from otel.vocabulary import MetricSpec

__all__ = [
    "ORCHESTRATOR",
    "CliRun",
    "FakeModule",
    "TelemetryHarness",
    "build_harness",
    "captured_otlp_logs",
    "children_by_parent",
    "event_names",
    "events_named",
    "fail",
    "find_spans",
    "hang",
    "log_records",
    "ok",
    "one_span",
    "panic",
    "run_job",
    "run_orchestrator",
    "span_hex_ids",
]

Behaviour = Callable[[ModuleContext], Awaitable[Mapping[str, Any]]]


# -- the harness ----------------------------------------------------------------------------


@dataclass
class TelemetryHarness:
    """A JobTelemetry and the in-memory SDK pieces behind it."""

    telemetry: JobTelemetry
    tracer_provider: TracerProvider
    span_exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    metric_reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.span_exporter.get_finished_spans())

    def trace(self, trace_id: str) -> list[ReadableSpan]:
        """The finished spans of one trace (``trace_id`` in hex, as persisted on the job)."""
        wanted = int(trace_id, 16)
        return [s for s in self.spans() if s.context is not None and s.context.trace_id == wanted]

    def metrics(self) -> dict[str, Metric]:
        """Every collected metric by name (one scope, one resource in these tests)."""
        data = self.metric_reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found[metric.name] = metric
        return found

    def points(self, spec: MetricSpec) -> list[Any]:
        """The data points of metric ``spec`` (empty when it was never recorded)."""
        metric = self.metrics().get(spec.name)
        return list(metric.data.data_points) if metric is not None else []

    def sums(self, spec: MetricSpec, *keys: str) -> dict[tuple[Any, ...], float]:
        """Counter values keyed by the given attribute values."""
        totals: dict[tuple[Any, ...], float] = defaultdict(float)
        for point in self.points(spec):
            assert isinstance(point, NumberDataPoint)
            totals[tuple((point.attributes or {}).get(k) for k in keys)] += point.value
        return dict(totals)

    def histogram_counts(self, spec: MetricSpec, *keys: str) -> dict[tuple[Any, ...], int]:
        """Histogram sample counts keyed by the given attribute values."""
        counts: dict[tuple[Any, ...], int] = defaultdict(int)
        for point in self.points(spec):
            counts[tuple(point.attributes.get(k) for k in keys)] += point.count
        return dict(counts)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def build_harness(sampler: Sampler | None = None) -> TelemetryHarness:
    """A JobTelemetry wired to in-memory providers (the job id generator, as in production)."""
    tracer_provider = TracerProvider(id_generator=JobIdGenerator())
    span_exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    metric_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metric_reader])
    telemetry = JobTelemetry(tracer_provider, meter_provider, sampler)
    return TelemetryHarness(telemetry, tracer_provider, span_exporter, meter_provider, metric_reader)


# -- logs -----------------------------------------------------------------------------------

_PROJECT_LOGGERS = ("orchestrator", "otel")


@contextlib.contextmanager
def captured_otlp_logs(level: int = logging.INFO) -> Iterator[InMemoryLogRecordExporter]:
    """The production OTLP log handler (with its context filter) on the root logger,
    exporting to memory; the project's loggers log at ``level`` meanwhile."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = logs.OtlpLogHandler(logger_provider=provider)
    handler.addFilter(logs.ContextFilter(trace_ids=False))
    root = logging.getLogger()
    previous = {name: logging.getLogger(name).level for name in _PROJECT_LOGGERS}
    root.addHandler(handler)
    for name in _PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        yield exporter
    finally:
        root.removeHandler(handler)
        for name, old in previous.items():
            logging.getLogger(name).setLevel(old)
        provider.shutdown()


def log_records(exporter: InMemoryLogRecordExporter, event_name: str | None = None) -> list[ReadableLogRecord]:
    found = list(exporter.get_finished_logs())
    if event_name is None:
        return found
    return [r for r in found if r.log_record.event_name == event_name]


# -- spans ----------------------------------------------------------------------------------


def find_spans(spans: Iterable[ReadableSpan], name: str | None = None, **attributes: Any) -> list[ReadableSpan]:
    """Spans named ``name`` (any name when None) whose attributes include ``attributes``."""
    return [
        s
        for s in spans
        if (name is None or s.name == name) and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]


def one_span(spans: Iterable[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = find_spans(spans, name, **attributes)
    assert len(found) == 1, f"expected one {name} span with {attributes}, found {len(found)}"
    return found[0]


def children_by_parent(spans: Iterable[ReadableSpan]) -> dict[int | None, list[ReadableSpan]]:
    """The tree as parent span id -> children (None: the spans without a parent), by start."""
    tree: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        tree[s.parent.span_id if s.parent is not None else None].append(s)
    return dict(tree)


def span_hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def event_names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def events_named(span: ReadableSpan, name: str) -> list[Event]:
    return [e for e in span.events if e.name == name]


# -- modules --------------------------------------------------------------------------------


@dataclass
class FakeModule:
    """An analysis module whose behaviour a test chooses."""

    name: str
    behaviour: Behaviour
    expected_runtime: float = 5.0
    timeout: float = 30.0
    version: str = "1.0.0"
    description: str = "a test module"
    started: anyio.Event | None = field(default=None, repr=False)

    async def run(self, context: ModuleContext) -> Mapping[str, Any]:
        if self.started is not None:
            self.started.set()
        return await self.behaviour(context)


def ok(delay: float = 0.0) -> Behaviour:
    async def run(context: ModuleContext) -> Mapping[str, Any]:
        if delay:
            await anyio.sleep(delay)
        return {"module": context.module, "ok": True}

    return run


def fail(message: str = "malformed manifest") -> Behaviour:
    async def run(context: ModuleContext) -> Mapping[str, Any]:
        raise ModuleError(message, module=context.module)

    return run


def panic(message: str = "boom") -> Behaviour:
    async def run(context: ModuleContext) -> Mapping[str, Any]:
        raise RuntimeError(message)

    return run


def hang() -> Behaviour:
    """Sleeps until cancelled (or timed out)."""

    async def run(context: ModuleContext) -> Mapping[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return run


# -- running a job --------------------------------------------------------------------------


async def run_job(
    app: App,
    request: Mapping[str, Any],
    *,
    worker_id: str = "test-worker",
    control: JobControl | None = None,
) -> Job:
    """Create, claim and execute one job in-process; returns it as stored afterwards."""
    created = await app.create.execute(dict(request))
    claimed = await app.workflow.claim(worker_id, lease_seconds=30.0)
    assert claimed is not None
    assert claimed.id == created.id
    await app.execute.execute(claimed, control=control, worker_id=worker_id)
    return await app.store.get(created.id)


# -- the command line in a subprocess ---------------------------------------------------------

ORCHESTRATOR: Final = str(Path(sys.executable).with_name("orchestrator"))


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_orchestrator(*args: str, cwd: Path, env: Mapping[str, str], timeout: float = 120.0) -> CliRun:
    """Run the ``orchestrator`` console script with ``env`` on top of an environment
    cleared of OTEL_* and ORCHESTRATOR_* variables (so the caller's shell cannot leak in)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    clean.update(env)
    started = time.monotonic()
    done = subprocess.run(
        [ORCHESTRATOR, *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
