"""A job's spans as the store describes them: plain records, built from the job row and
its lifecycle history, with the ids the live spans carry.

The live path emits the root span (and the execute spans of lost attempts) from these
builders at the terminal transition; the reconciler and ``orchestrator trace`` build
every span the store can describe with them (:func:`spans_from_store`). Times are the
stored ones: the history's timestamps, each module result's start and duration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobStatus,
    LifecycleEntry,
    ModuleOutcome,
    ModuleResult,
)
from orchestrator.tracing.attempts import LEASE_EXPIRED, Attempt, attempts_of
from otel.ids import SpanPlace, span_id_for
from otel.vocabulary import Attr, LinkKind, ModuleEvent, SpanName

__all__ = [
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNSET",
    "SpanEvent",
    "SpanRecord",
    "lost_attempt_spans",
    "queued_span",
    "root_span",
    "spans_from_store",
]

#: Span status codes, as OTLP numbers them (and the SDK's StatusCode).
STATUS_UNSET: Final = 0
STATUS_OK: Final = 1
STATUS_ERROR: Final = 2

#: The error.type of an attempt whose worker was lost.
WORKER_LOST: Final = "worker_lost"


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span: ids in hex (``parent_id`` empty for the root), times in Unix ns."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...] = ()
    status_code: int = STATUS_UNSET
    status_message: str = ""
    #: Links as (W3C traceparent, attributes).
    links: tuple[tuple[str, Mapping[str, Any]], ...] = ()


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


def _sid(job: Job, place: SpanPlace, attempt: int = 0, module: str = "") -> str:
    return _hex(span_id_for(job.trace.trace_id, place, attempt, module))


def _base(job: Job, reconstructed: bool, **more: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {Attr.JOB_ID: job.id, Attr.PROJECT_ID: job.project_id, **more}
    if reconstructed:
        attributes[Attr.RECONSTRUCTED] = True
    return attributes


# -- the root ------------------------------------------------------------------------------


def root_span(job: Job, history: Sequence[LifecycleEntry], *, reconstructed: bool = False) -> SpanRecord:
    """The job's root span: creation to the terminal transition, the persisted history
    as its events at their true timestamps."""
    attributes = _base(
        job,
        reconstructed,
        **{
            Attr.MODULE_COUNT: len(job.modules),
            Attr.ATTEMPT: job.attempt,
            Attr.STATUS: str(job.status),
            Attr.REASON: job.reason or "",
        },
    )
    if job.error_category:
        attributes[Attr.ERROR_CATEGORY] = str(job.error_category)
        attributes[Attr.ERROR_TYPE] = str(job.error_category)
    if job.error_phase:
        attributes[Attr.PHASE] = str(job.error_phase)
    status, message = STATUS_UNSET, ""
    if job.status is JobStatus.FAILED:
        status, message = STATUS_ERROR, job.reason or ""
    elif job.status is JobStatus.COMPLETED:
        status = STATUS_OK
    end = job.finished_ns or (history[-1].at_ns if history else job.status_ns)
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=job.trace.span_id,
        parent_id="",
        name=SpanName.JOB,
        start_ns=job.created_ns,
        end_ns=end,
        attributes=attributes,
        events=tuple(_lifecycle_event(job, entry) for entry in history),
        status_code=status,
        status_message=message,
        links=((job.trace.link, {Attr.LINK_KIND: str(LinkKind.CALLER)}),) if job.trace.link else (),
    )


def _lifecycle_event(job: Job, entry: LifecycleEntry) -> SpanEvent:
    return SpanEvent(
        str(entry.event),
        entry.at_ns,
        {
            Attr.JOB_ID: job.id,
            Attr.PROJECT_ID: job.project_id,
            Attr.STATUS_FROM: str(entry.status_from or "none"),
            Attr.STATUS_TO: str(entry.status_to),
            Attr.REASON: entry.reason,
            # To the nanosecond the history was measured in: a coarser rounding here, then the
            # report's, made the files' answer differ from the store's at a boundary.
            Attr.DURATION_MS: round(entry.duration_ms, 6),
            Attr.ATTEMPT: entry.attempt,
            Attr.WORKER_ID: entry.worker_id or "",
        },
    )


# -- phases --------------------------------------------------------------------------------


def _create_span(job: Job, history: Sequence[LifecycleEntry], reconstructed: bool) -> SpanRecord:
    # Validated and persisted: from creation to the job's next status (its enqueue).
    after = next((e.at_ns for e in history if e.status_from is JobStatus.PENDING), job.created_ns)
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=_sid(job, SpanPlace.CREATE),
        parent_id=job.trace.span_id,
        name=SpanName.CREATE,
        start_ns=job.created_ns,
        end_ns=max(after, job.created_ns),
        attributes=_base(job, reconstructed),
    )


def _queued_span(job: Job, attempt: Attempt, reconstructed: bool) -> SpanRecord:
    return queued_span(job, attempt.number, attempt.queued_ns, attempt.started_ns, reconstructed=reconstructed)


def queued_span(job: Job, attempt: int, start_ns: int, end_ns: int, *, reconstructed: bool = False) -> SpanRecord:
    """The time attempt ``attempt`` waited in the queue (emitted live when it is claimed)."""
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=_sid(job, SpanPlace.QUEUED, attempt),
        parent_id=job.trace.span_id,
        name=SpanName.QUEUED,
        start_ns=start_ns,
        end_ns=end_ns,
        attributes=_base(job, reconstructed, **{Attr.ATTEMPT: attempt}),
    )


def _execute_span(
    job: Job, attempt: Attempt, results: Sequence[ModuleResult], reconstructed: bool
) -> SpanRecord | None:
    """The attempt's execute span: to its last module's end, or to the end of the
    attempt; a lost attempt ends where it was recovered, in error worker_lost."""
    if attempt.ended is None:
        return None  # still running: its span is not finished
    attributes = _base(
        job,
        reconstructed,
        **{
            Attr.ATTEMPT: attempt.number,
            Attr.WORKER_ID: attempt.worker_id or "",
            Attr.MODULE_COUNT: len(job.modules),
        },
    )
    status, message = STATUS_UNSET, ""
    end = attempt.ended.at_ns
    events: tuple[SpanEvent, ...] = ()
    if attempt.lost:
        attributes[Attr.ERROR_TYPE] = WORKER_LOST
        attributes[Attr.REASON] = LEASE_EXPIRED
        status, message = STATUS_ERROR, f"attempt {attempt.number} lost: {LEASE_EXPIRED}"
    elif results:
        end = min(end, max(_end_ns(r) for r in results))
        events = (_fanout(job, results, end),)
    elif job.error_category is ErrorCategory.MODULE_UNAVAILABLE and attempt.number == job.attempt:
        attributes[Attr.ERROR_TYPE] = str(ErrorCategory.MODULE_UNAVAILABLE)
        status, message = STATUS_ERROR, job.reason or ""
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=_sid(job, SpanPlace.EXECUTE, attempt.number),
        parent_id=job.trace.span_id,
        name=SpanName.EXECUTE,
        start_ns=attempt.started_ns,
        end_ns=max(end, attempt.started_ns),
        attributes=attributes,
        events=events,
        status_code=status,
        status_message=message,
    )


def _fanout(job: Job, results: Sequence[ModuleResult], at_ns: int) -> SpanEvent:
    """The fan-out's aggregate, as the execute span ends with it."""
    outcomes = [r.outcome for r in results]
    return SpanEvent(
        ModuleEvent.FANOUT,
        at_ns,
        {
            Attr.JOB_ID: job.id,
            Attr.COMPLETED: outcomes.count(ModuleOutcome.OK),
            Attr.FAILED: sum(1 for o in outcomes if o.failed),
            Attr.CANCELLED: outcomes.count(ModuleOutcome.CANCELLED),
            Attr.TOTAL: len(job.modules),
        },
    )


def _finalize_span(job: Job, attempt: Attempt, results: Sequence[ModuleResult], reconstructed: bool) -> SpanRecord:
    # From the last module's end to the terminal transition that stored the results.
    assert attempt.ended is not None
    start = min(max(_end_ns(r) for r in results), attempt.ended.at_ns)
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=_sid(job, SpanPlace.FINALIZE, attempt.number),
        parent_id=job.trace.span_id,
        name=SpanName.FINALIZE,
        start_ns=start,
        end_ns=attempt.ended.at_ns,
        attributes=_base(job, reconstructed, status_to=str(attempt.ended.status_to)),
    )


# -- modules -------------------------------------------------------------------------------


def _end_ns(result: ModuleResult) -> int:
    return result.started_ns + round(result.duration_ms * 1e6)


def _module_span(job: Job, result: ModuleResult, reconstructed: bool) -> SpanRecord:
    """One stored module result as its span: spawn and outcome events, status, error."""
    end = _end_ns(result)
    duration = round(result.duration_ms, 6)
    outcome = result.outcome
    attributes = _base(
        job,
        reconstructed,
        **{
            Attr.MODULE: result.module,
            Attr.MODULE_VERSION: result.version,
            Attr.ATTEMPT: result.attempt,
            Attr.EXPECTED_MS: result.expected_ms,
            Attr.TIMEOUT_MS: result.timeout_ms,
            Attr.OUTCOME: str(outcome),
        },
    )
    done = {Attr.JOB_ID: job.id, Attr.MODULE: result.module, Attr.DURATION_MS: duration, Attr.OUTCOME: str(outcome)}
    events = [SpanEvent(ModuleEvent.SPAWN, result.started_ns, {Attr.JOB_ID: job.id, Attr.MODULE: result.module})]
    status, message = STATUS_UNSET, ""
    if outcome is ModuleOutcome.OK:
        events.append(SpanEvent(ModuleEvent.COMPLETE, end, done))
        status = STATUS_OK
    elif outcome is ModuleOutcome.CANCELLED:
        events.append(SpanEvent(ModuleEvent.ERROR, end, {**done, Attr.ERROR: "cancelled"}))
        attributes[Attr.ERROR_TYPE] = str(ErrorCategory.CANCELLED)
    else:
        event = {ModuleOutcome.PANIC: ModuleEvent.PANIC, ModuleOutcome.TIMEOUT: ModuleEvent.TIMEOUT}.get(
            outcome, ModuleEvent.ERROR
        )
        events.append(SpanEvent(event, end, {**done, Attr.ERROR: result.error or ""}))
        if result.error_type:
            # The exception as the semantic conventions record it (its stack is not stored).
            exception = {
                "exception.type": result.error_type,
                "exception.message": result.error or "",
                Attr.MODULE: result.module,
            }
            events.append(SpanEvent("exception", end, exception))
        attributes[Attr.ERROR_TYPE] = str(outcome.category or ErrorCategory.INTERNAL)
        status, message = STATUS_ERROR, result.error or ""
    if result.overran:
        events.append(SpanEvent(ModuleEvent.OVERRUN, end, {**done, Attr.EXPECTED_MS: result.expected_ms}))
    return SpanRecord(
        trace_id=job.trace.trace_id,
        span_id=_sid(job, SpanPlace.MODULE, result.attempt, result.module),
        parent_id=_sid(job, SpanPlace.EXECUTE, result.attempt),
        name=SpanName.MODULE,
        start_ns=result.started_ns,
        end_ns=max(end, result.started_ns),
        attributes=attributes,
        events=tuple(events),
        status_code=status,
        status_message=message,
    )


# -- whole traces --------------------------------------------------------------------------


def lost_attempt_spans(job: Job, history: Sequence[LifecycleEntry]) -> list[SpanRecord]:
    """The execute spans of the job's lost attempts (their workers never ended them),
    emitted with its root span by the process that ends the job."""
    spans = [_execute_span(job, a, (), reconstructed=False) for a in attempts_of(history) if a.lost]
    return [s for s in spans if s is not None]


def spans_from_store(job: Job, history: Sequence[LifecycleEntry]) -> list[SpanRecord]:
    """Every span of the job the store can describe, marked ``reconstructed``: create,
    each queue wait and execute attempt (lost ones in error worker_lost), one module
    span per stored result, finalize, and the root once the job has ended. Parents come
    before their children."""
    if not history:
        return []
    attempts = attempts_of(history)
    spans = [_create_span(job, history, True)]
    for attempt in attempts:
        results = [r for r in job.results if r.attempt == attempt.number]
        spans.append(_queued_span(job, attempt, True))
        execute = _execute_span(job, attempt, results, True)
        if execute is None:
            continue
        spans.append(execute)
        spans.extend(_module_span(job, r, True) for r in results)
        if results and not attempt.lost and attempt.ended is not None and attempt.ended.status_to.terminal:
            spans.append(_finalize_span(job, attempt, results, True))
    if job.status.terminal:
        spans.insert(0, root_span(job, history, reconstructed=True))
    return spans
