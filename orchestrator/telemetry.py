"""Job telemetry: one event source that derives spans, span events, logs and metrics.

The workflow and the use cases report what happened here (a transition, a module
finishing, a phase starting); this module turns each report into the log record,
the span or span event and the metric points of the vocabulary in :mod:`otel.vocabulary`,
so the three signals can never disagree.

Traces: one per job. The job's trace id and root span id are decided at creation
and persisted (:class:`TraceContext`); child spans in any process parent on them;
the root span itself is emitted once, by the process that performs the terminal
transition, with the job's creation as its start and the persisted lifecycle
history as its span events, at their true timestamps (with it, the execute spans of
the job's lost attempts, from the same history). Every other job span has a
deterministic id (:func:`otel.ids.span_id_for`), so a span rebuilt from the store
(:mod:`orchestrator.tracing`) is the same span as the live one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobStatus,
    LifecycleEntry,
    ModuleOutcome,
    ModuleResult,
    OrchestratorError,
    Phase,
    TraceContext,
    Transition,
    lifecycle_event,
    now_ns,
)
from orchestrator.tracing.emit import emit_spans, start_live_span
from orchestrator.tracing.records import lost_attempt_spans, queued_span, root_span
from otel import logs
from otel.ids import SpanPlace, span_id_for
from otel.instrument import mark_logged
from otel.tallies import TALLIED, Tally, board_for
from otel.vocabulary import (
    INSTRUMENTATION_SCOPE,
    METRICS,
    Attr,
    LifecycleEvent,
    Metric,
    MetricKind,
    MetricSpec,
    ModuleEvent,
    OperationEvent,
    SpanName,
)

__all__ = ["JobTelemetry", "as_current", "parse_traceparent"]

log = logging.getLogger("orchestrator.lifecycle")
module_log = logging.getLogger("orchestrator.modules")

_LEVEL_BY_TARGET: Mapping[JobStatus, int] = {
    JobStatus.FAILED: logging.ERROR,
    JobStatus.CANCELLED: logging.WARNING,
}
_TRACEPARENT = TraceContextTextMapPropagator()
#: What ``_in_job_trace`` returns when the job's trace is current already (reusable).
_UNCHANGED: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
#: The phase spans whose place in a job gives them a deterministic id (create once per job).
_PHASE_PLACES: Mapping[str, SpanPlace] = {
    SpanName.CREATE: SpanPlace.CREATE,
    SpanName.EXECUTE: SpanPlace.EXECUTE,
    SpanName.FINALIZE: SpanPlace.FINALIZE,
}


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The span context of a W3C ``traceparent`` header, or None when it is malformed."""
    if not value:
        return None
    ctx = _TRACEPARENT.extract({"traceparent": value.strip()})
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def _root_span_context(tc: TraceContext) -> SpanContext:
    return SpanContext(
        trace_id=int(tc.trace_id, 16),
        span_id=int(tc.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if tc.sampled else TraceFlags.DEFAULT),
    )


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


class JobTelemetry:
    """Turns job events into logs, spans and metrics (all from the same call)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self._sampler = sampler
        #: None: the global one (what :func:`orchestrator.tracing.ledger.ledger_for` looks up).
        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(INSTRUMENTATION_SCOPE, meter_provider=meter_provider)
        # Counters and gauges are tallied in process and observed at collection; the
        # histograms too where the provider was set up for it (otel.setup: its readers
        # take them at collection, exemplars included), else the SDK's instruments.
        board = board_for(meter_provider if meter_provider is not None else metrics.get_meter_provider())
        self._instruments: dict[str, Any] = {}
        for spec in METRICS:
            if spec.kind in TALLIED:
                self._instruments[spec.name] = Tally(meter, spec)
            elif spec.kind is MetricKind.HISTOGRAM and board is not None:
                self._instruments[spec.name] = board.histogram(spec)
            else:
                self._instruments[spec.name] = _create(meter, spec)
        #: Phase spans still open, by id(span): (phase name, start in ns) (see _close_phase).
        self._open_phases: dict[int, tuple[str, int]] = {}

    # -- helpers ----------------------------------------------------------------------

    def new_trace(self, *, link: str | None = None) -> TraceContext:
        """A new job trace, with the sampling decision taken now and persisted, so every
        process that touches the job honours the same one."""
        trace_context = TraceContext.new(link=link)
        if self._sampler is None:
            return trace_context
        result = self._sampler.should_sample(None, int(trace_context.trace_id, 16), SpanName.JOB)
        return replace(trace_context, sampled=result.decision is Decision.RECORD_AND_SAMPLE)

    def root_context(self, job: Job) -> otel_context.Context:
        """An OpenTelemetry context whose current span is the job's (remote) root."""
        return trace.set_span_in_context(NonRecordingSpan(_root_span_context(job.trace)))

    def _in_job_trace(self, job: Job) -> contextlib.AbstractContextManager[object]:
        """Make the job's root span current unless a span of the job's trace already is:
        records written outside one (a claim, a reaper's recovery, a cancel from another
        process) still carry the job's trace id."""
        current = trace.get_current_span().get_span_context()
        if current.is_valid and format(current.trace_id, "032x") == job.trace.trace_id:
            return _UNCHANGED
        return as_current(NonRecordingSpan(_root_span_context(job.trace)))

    def _add(self, spec: MetricSpec, value: float, **attributes: str) -> None:
        self._instruments[spec.name].add(value, attributes)

    def _record(self, spec: MetricSpec, value: float, **attributes: str) -> None:
        self._instruments[spec.name].record(value, attributes)

    def _set(self, spec: MetricSpec, value: float, **attributes: str) -> None:
        self._instruments[spec.name].set(value, attributes)

    # -- lifecycle --------------------------------------------------------------------

    def created(self, job: Job) -> None:
        logs.event(
            log,
            logging.INFO,
            lifecycle_event(None, JobStatus.PENDING),
            "job created",
            job_id=job.id,
            project_id=job.project_id,
            # The same fields as every other lifecycle record and as the persisted
            # creation row (and the root span's create event): none -> pending, "created".
            status_from="none",
            status_to=str(job.status),
            reason="created",
            duration_ms=0.0,
            attempt=job.attempt,
            modules=",".join(job.modules),
            trace_id=job.trace.trace_id,
        )
        self._add(Metric.TRANSITIONS, 1, status_from="none", status_to=str(JobStatus.PENDING))

    def transitioned(self, before: Job, after: Job, t: Transition) -> None:
        """Log and count one applied transition (the root span event comes from the
        persisted history when the root span is emitted)."""
        name = lifecycle_event(t.status_from, t.status_to)
        with self._in_job_trace(after):
            logs.event(
                log,
                _LEVEL_BY_TARGET.get(t.status_to, logging.INFO),
                name,
                f"{t.status_from} -> {t.status_to}: {t.reason}",
                job_id=after.id,
                project_id=after.project_id,
                status_from=str(t.status_from),
                status_to=str(t.status_to),
                reason=t.reason,
                duration_ms=round(t.duration_ms, 3),
                attempt=t.new_attempt,
                worker_id=t.worker_id,
                error_category=t.error_category and str(t.error_category),
                phase=t.error_phase and str(t.error_phase),
            )
        self._add(Metric.TRANSITIONS, 1, status_from=str(t.status_from), status_to=str(t.status_to))
        self._record(Metric.PHASE_DURATION, t.duration_ms / 1000, phase=str(t.status_from))
        if t.status_from is JobStatus.QUEUED and t.status_to is JobStatus.RUNNING:
            self._record(Metric.QUEUE_WAIT, t.duration_ms / 1000)
            # From the stored queued_ns, exactly: the span rebuilt from the store is identical.
            start = after.queued_ns if after.queued_ns is not None else t.at_ns - int(t.duration_ms * 1e6)
            self._queued_span(after, start_ns=start, end_ns=t.at_ns)
        if t.status_from is JobStatus.RUNNING and t.status_to is JobStatus.QUEUED:
            self._add(Metric.RECOVERIES, 1, reason=t.reason)
        if t.status_to.terminal:
            self._record(Metric.JOB_DURATION, (t.at_ns - after.created_ns) / 1e9, status=str(t.status_to))
        if t.status_to is JobStatus.FAILED:
            self._add(
                Metric.FAILURES,
                1,
                phase=str(t.error_phase or Phase.EXECUTE),
                error_category=str(t.error_category or ErrorCategory.INTERNAL),
            )

    def cancel_requested(self, job: Job, *, reason: str, requested_by: str) -> None:
        """A cancellation was asked of a Running job (its history has the row, its root
        span gets the event when it is emitted)."""
        with self._in_job_trace(job):
            logs.event(
                log,
                logging.INFO,
                LifecycleEvent.CANCEL_REQUESTED,
                f"cancellation requested: {reason}",
                job_id=job.id,
                project_id=job.project_id,
                status_from=str(job.status),
                status_to=str(job.status),
                reason=reason,
                requested_by=requested_by,
                attempt=job.attempt,
            )

    def transition_refused(self, job: Job, target: JobStatus, error: OrchestratorError) -> None:
        mark_logged(error)
        logs.event(
            log,
            logging.WARNING,
            OperationEvent.TRANSITION_REFUSED,
            error.message,
            job_id=job.id,
            project_id=job.project_id,
            status_from=str(job.status),
            status_to=str(target),
            error_category=str(error.category),
        )

    def finished(self, job: Job, history: Sequence[LifecycleEntry]) -> None:
        """Emit the job's root span, once, at its terminal transition, and before it the
        execute spans of the attempts its workers lost (from the same history: written
        by the process that ends the job, they survive a reaper that dies right after
        its recovery). Both are built as a trace rebuilt from the store would be."""
        if not job.trace.sampled or not job.status.terminal:
            return
        # The finalize span (current while the terminal transition is written) ends where
        # the root does, and is handed to the exporter first: a root confirmed exported
        # then never leaves its finalize span behind in a queue.
        current = trace.get_current_span()
        if id(current) in self._open_phases and getattr(current, "name", None) == SpanName.FINALIZE:
            self._close_phase(current, job.finished_ns)
        emit_spans(self.tracer, [*lost_attempt_spans(job, history), root_span(job, history)])

    def trace_reconstructed(self, job: Job, *, spans: int, reason: str) -> None:
        """A job's trace was rebuilt from the store and emitted again (its live export
        was lost): counted, and logged once per trace."""
        self._add(Metric.TRACES_RECONSTRUCTED, 1, reason=reason)
        with self._in_job_trace(job):
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.TRACE_RECONSTRUCTED,
                f"trace of job {job.id} rebuilt from the store and exported again ({spans} spans): {reason}",
                job_id=job.id,
                project_id=job.project_id,
                trace_id=job.trace.trace_id,
                reason=reason,
                spans=spans,
                status=str(job.status),
            )

    # -- phase spans ------------------------------------------------------------------

    def phase(self, job: Job, name: str, *, start_ns: int | None = None, **attributes: Any) -> _Phase:
        """A child span of the job's root (create, execute, finalize, notify), current
        in a ``with`` block and ended at its exit (its error recorded if it raises); the
        create span (once per job) and each attempt's execute and finalize spans get
        their deterministic ids."""
        return _Phase(self, job, name, start_ns, attributes)

    def _open_phase(self, job: Job, name: str, start_ns: int | None, attributes: Mapping[str, Any]) -> trace.Span:
        place = _PHASE_PLACES.get(name)
        attempt = 0 if place is SpanPlace.CREATE else job.attempt
        span_id = span_id_for(job.trace.trace_id, place, attempt) if place is not None else 0
        span = start_live_span(
            self.tracer,
            name,
            context=self.root_context(job),
            start_ns=start_ns,
            attributes={Attr.JOB_ID: job.id, Attr.PROJECT_ID: job.project_id, **attributes},
            ids=(int(job.trace.trace_id, 16), span_id) if span_id else None,
        )
        self._open_phases[id(span)] = (name.removeprefix("job."), start_ns or now_ns())
        return span

    def _close_phase(self, span: trace.Span, end_ns: int | None = None) -> None:
        """End a phase span (once) and record its duration."""
        opened = self._open_phases.pop(id(span), None)
        if opened is None:
            return  # already ended (the finalize span, by the root's emission)
        name, start = opened
        span.end(end_time=end_ns)
        self._record(Metric.PHASE_DURATION, max(0, (end_ns or now_ns()) - start) / 1e9, phase=name)

    def _queued_span(self, job: Job, *, start_ns: int, end_ns: int) -> None:
        """The wait just ended, as a finished span (the record a rebuild makes too); a job
        not sampled has none, as its other spans (their parent is not sampled)."""
        if job.trace.sampled:
            emit_spans(self.tracer, [queued_span(job, job.attempt, start_ns, end_ns)])

    def lost_attempt(self, job: Job, *, reason: str, end_ns: int) -> None:
        """A lost attempt is being recovered. Its execute span (error.type worker_lost)
        is emitted with the job's root span by the process that ends the job, from the
        stored history (see :meth:`finished`): emitted here, it would die with this
        process if it were killed right after the recovery, and nothing would rebuild it."""

    # -- modules ----------------------------------------------------------------------

    def module_expected_runtime(self, module: str, seconds: float) -> None:
        self._set(Metric.MODULE_EXPECTED, seconds, module=module)

    def module_progress(self, span: trace.Span, done: int, total: int | None, *, milestone: bool, final: bool) -> None:
        """A module's (throttled) progress: a span event at 25/50/75 %, the counts as span
        attributes at its end; never one record per file."""
        if milestone:
            attributes: dict[str, Any] = {Attr.PROGRESS_DONE: done}
            if total is not None:
                attributes[Attr.PROGRESS_TOTAL] = total
            span.add_event(ModuleEvent.PROGRESS, attributes)
        if final:
            span.set_attribute(Attr.PROGRESS_DONE, done)
            if total is not None:
                span.set_attribute(Attr.PROGRESS_TOTAL, total)

    def module_budget(self, span: trace.Span, *, timeout_s: float, expected_s: float, scale: float | None) -> None:
        """The budget a module ran under, as it stood at its end (scaled to the tree)."""
        span.set_attribute(Attr.EXPECTED_MS, expected_s * 1000)
        span.set_attribute(Attr.TIMEOUT_MS, timeout_s * 1000)
        if scale is not None:
            span.set_attribute(Attr.BUDGET_SCALE, round(scale, 3))

    def index_walked(self, span: trace.Span, files: int, total_bytes: int, ignored: int) -> None:
        """The job's index is known: its size on the job's execute span."""
        span.set_attribute(Attr.INDEX_FILES, files)
        span.set_attribute(Attr.INDEX_BYTES, total_bytes)
        span.set_attribute(Attr.INDEX_IGNORED, ignored)

    def module_started(self, job: Job, module: str, version: str, expected_s: float) -> trace.Span:
        span_id = span_id_for(job.trace.trace_id, SpanPlace.MODULE, job.attempt, module)
        span = start_live_span(
            self.tracer,
            SpanName.MODULE,
            attributes={
                Attr.JOB_ID: job.id,
                Attr.PROJECT_ID: job.project_id,
                Attr.MODULE: module,
                Attr.MODULE_VERSION: version,
                Attr.ATTEMPT: job.attempt,
                Attr.EXPECTED_MS: expected_s * 1000,
            },
            ids=(int(job.trace.trace_id, 16), span_id),
        )
        span.add_event(ModuleEvent.SPAWN, {Attr.JOB_ID: job.id, Attr.MODULE: module})
        # Debug: the module span has it, and the fan-out aggregate (info) counts the spawns;
        # at info a job of five modules wrote five records more than its lifecycle.
        with as_current(span):
            logs.event(module_log, logging.DEBUG, ModuleEvent.SPAWN, f"module {module} spawned", module=module)
        return span

    def module_finished(self, job: Job, span: trace.Span, result: ModuleResult, exc: BaseException | None) -> None:
        # The module's span is current while its records are written: they carry its ids.
        with as_current(span):
            self._module_finished(job, span, result, exc)

    def _module_finished(self, job: Job, span: trace.Span, result: ModuleResult, exc: BaseException | None) -> None:
        attrs: dict[str, Any] = {
            Attr.JOB_ID: job.id,
            Attr.MODULE: result.module,
            # Full precision on the span (the report reads it back); the log fields round.
            Attr.DURATION_MS: round(result.duration_ms, 6),
            Attr.OUTCOME: str(result.outcome),
        }
        fields: dict[str, Any] = {
            Attr.MODULE: result.module,
            Attr.DURATION_MS: round(result.duration_ms, 3),
            Attr.OUTCOME: str(result.outcome),
            Attr.EXPECTED_MS: result.expected_ms,
        }
        span.set_attribute(Attr.OUTCOME, str(result.outcome))
        outcome = result.outcome
        if outcome is ModuleOutcome.OK:
            span.add_event(ModuleEvent.COMPLETE, attrs)
            span.set_status(Status(StatusCode.OK))
            # Debug: the module span has it, and the fan-out aggregate (info) counts it;
            # errors, timeouts, panics and overruns stay records of their own.
            logs.event(
                module_log,
                logging.DEBUG,
                ModuleEvent.COMPLETE,
                f"module {result.module} completed in {fields[Attr.DURATION_MS]} ms",
                **fields,
            )
        elif outcome is ModuleOutcome.CANCELLED:
            span.add_event(ModuleEvent.ERROR, {**attrs, Attr.ERROR: "cancelled"})
            span.set_attribute(Attr.ERROR_TYPE, str(ErrorCategory.CANCELLED))
            logs.event(
                module_log,
                logging.WARNING,
                ModuleEvent.ERROR,
                f"module {result.module} cancelled",
                error="cancelled",
                **fields,
            )
        else:
            event = ModuleEvent.PANIC if outcome is ModuleOutcome.PANIC else ModuleEvent.ERROR
            if outcome is ModuleOutcome.TIMEOUT:
                event = ModuleEvent.TIMEOUT
            category = outcome.category or ErrorCategory.INTERNAL
            span.add_event(event, {**attrs, Attr.ERROR: result.error or ""})
            if exc is not None:
                span.record_exception(exc, attributes={Attr.MODULE: result.module})
            span.set_status(Status(StatusCode.ERROR, result.error))
            span.set_attribute(Attr.ERROR_TYPE, str(category))
            logs.event(
                module_log,
                logging.ERROR,
                event,
                f"module {result.module} {outcome}: {result.error}",
                error=result.error,
                error_category=str(category),
                exc_info=exc if outcome is ModuleOutcome.PANIC else None,
                **fields,
            )
        self._record(Metric.MODULE_DURATION, result.duration_ms / 1000, module=result.module, outcome=str(outcome))
        if result.overran:
            span.add_event(ModuleEvent.OVERRUN, {**attrs, Attr.EXPECTED_MS: result.expected_ms})
            self._add(Metric.MODULE_OVERRUNS, 1, module=result.module)
            logs.event(
                module_log,
                logging.WARNING,
                ModuleEvent.OVERRUN,
                f"module {result.module} ran {fields[Attr.DURATION_MS]} ms, over its expected {result.expected_ms} ms",
                **fields,
            )
        span.end()

    def fanout(self, job: Job, *, done: int, failed: int, cancelled: int, total: int, final: bool) -> None:
        # Progress after each module at debug; the aggregate at the end is the milestone.
        logs.event(
            module_log,
            logging.INFO if final else logging.DEBUG,
            ModuleEvent.FANOUT,
            f"{done}/{total} modules done, {failed} failed" + (f", {cancelled} cancelled" if cancelled else ""),
            completed=done,
            failed=failed,
            cancelled=cancelled,
            total=total,
            final=final,
        )
        if final:
            trace.get_current_span().add_event(
                ModuleEvent.FANOUT,
                {
                    Attr.JOB_ID: job.id,
                    Attr.COMPLETED: done,
                    Attr.FAILED: failed,
                    Attr.CANCELLED: cancelled,
                    Attr.TOTAL: total,
                },
            )

    # -- process-level ----------------------------------------------------------------

    def active_jobs(self, delta: int) -> None:
        self._add(Metric.ACTIVE_JOBS, delta)

    def queue_depth(self, depth: int) -> None:
        self._set(Metric.QUEUE_DEPTH, depth)

    def webhook_attempt(self, outcome: str, seconds: float, *, dead: bool) -> None:
        self._add(Metric.WEBHOOK_DELIVERIES, 1, outcome=outcome)
        self._record(Metric.WEBHOOK_LATENCY, seconds, outcome=outcome)
        if dead:
            self._add(Metric.FAILURES, 1, phase=str(Phase.NOTIFY), error_category=str(ErrorCategory.WEBHOOK))


class as_current:
    """Make ``span`` current without ending it, recording an exception on it or setting
    its status: whoever owns the span reports its outcome, once (what ``trace.use_span``
    does with all three turned off, without a generator per use)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        otel_context.detach(cast(Any, self._token))


class _Phase:
    """One phase span's ``with`` block (see :meth:`JobTelemetry.phase`): a class, not a
    generator, as three of them open for every job."""

    __slots__ = ("_attributes", "_job", "_name", "_span", "_start_ns", "_telemetry", "_token")

    def __init__(
        self, telemetry: JobTelemetry, job: Job, name: str, start_ns: int | None, attributes: Mapping[str, Any]
    ) -> None:
        self._telemetry, self._job, self._name = telemetry, job, name
        self._start_ns, self._attributes = start_ns, attributes
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None

    def __enter__(self) -> trace.Span:
        self._span = self._telemetry._open_phase(self._job, self._name, self._start_ns, self._attributes)
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Ended (and its duration recorded) while it is still current, as before it is left.
        try:
            if error is not None:
                _mark_error(self._span, error)
        finally:
            try:
                self._telemetry._close_phase(self._span)
            finally:
                otel_context.detach(cast(Any, self._token))


def _mark_error(span: trace.Span, exc: BaseException) -> None:
    category = getattr(exc, "category", None)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
    span.set_attribute(Attr.ERROR_TYPE, str(category) if category else type(exc).__qualname__)


def _create(meter: metrics.Meter, spec: MetricSpec) -> Any:
    if spec.kind is MetricKind.COUNTER:
        return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind is MetricKind.UP_DOWN_COUNTER:
        return meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind is MetricKind.GAUGE:
        return meter.create_gauge(spec.name, unit=spec.unit, description=spec.description)
    return meter.create_histogram(
        spec.name,
        unit=spec.unit,
        description=spec.description,
        explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None,
    )
