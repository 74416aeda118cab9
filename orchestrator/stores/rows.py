"""Mapping between stored rows and domain objects: the one place values enter the store.

Every value written goes through the canonical form of :mod:`orchestrator.domain.values`
here (text with NUL and lone surrogates escaped, JSON that both databases hold alike), so
SQLite and PostgreSQL store the same thing and any stored value can be read back. Reading
is lenient: a field that cannot be decoded marks the job as damaged instead of breaking
the read, so a listing still answers and the job can be pruned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobOptions,
    JobStatus,
    LifecycleEntry,
    ModuleResult,
    Phase,
    TraceContext,
    Transition,
    lifecycle_event,
)
from orchestrator.domain.events import LifecycleEvent
from orchestrator.domain.values import canonical_json, canonical_reason, canonical_text
from orchestrator.stores.connector import UNDECODABLE, JSONText, Row

__all__ = [
    "entry_from_row",
    "job_from_row",
    "job_params",
    "json_text",
    "json_text_of",
    "json_value",
    "transition_params",
]

T = TypeVar("T")


def _dumps(value: Any) -> JSONText:
    """``value`` (already canonical) as the compact JSON text the store binds."""
    return JSONText(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False))


def json_text(value: Any) -> JSONText:
    """``value`` in canonical form, as the JSON text bound to a JSON column."""
    return _dumps(canonical_json(value))


def json_text_of(params: Sequence[Mapping[str, Any]]) -> JSONText:
    """Query parameters already in canonical form (``transition_params``), as one JSON
    array bound to a single parameter (a statement writing several rows)."""
    return _dumps(params)


def _text(value: str | None) -> str | None:
    return None if value is None else canonical_text(value)


def _reason(value: str | None) -> str | None:
    return None if value is None else canonical_reason(value)


def _results(results: tuple[ModuleResult, ...]) -> JSONText:
    # Each field on its own: a summary keeps MAX_DEPTH levels counted from itself, not from
    # the column's root.
    return _dumps([{k: canonical_json(v) for k, v in r.to_json().items()} for r in results])


def job_params(job: Job) -> dict[str, Any]:
    """The parameters of ``insert_job``."""
    return {
        "id": job.id,
        "project_id": canonical_text(job.project_id),
        "source": canonical_text(job.source),
        "modules": json_text(list(job.modules)),
        "options": json_text(job.options.to_json()),
        "status": str(job.status),
        "attempt": job.attempt,
        "created_ns": job.created_ns,
        "status_ns": job.status_ns,
        "queued_ns": job.queued_ns,
        "started_ns": job.started_ns,
        "finished_ns": job.finished_ns,
        "reason": _reason(job.reason),
        "error_category": job.error_category and str(job.error_category),
        "error_phase": job.error_phase and str(job.error_phase),
        "results": _results(job.results),
        "trace_id": job.trace.trace_id,
        "root_span_id": job.trace.span_id,
        "trace_sampled": job.trace.sampled,
        "trace_link": _text(job.trace.link),
        "lease_owner": _text(job.lease_owner),
        "lease_expires_ns": job.lease_expires_ns,
        "worker_id": _text(job.worker_id),
    }


def transition_params(t: Transition) -> dict[str, Any]:
    """The parameters of ``apply_transition``."""
    return {
        "job_id": t.job_id,
        "status_from": str(t.status_from),
        "status_to": str(t.status_to),
        "reason": canonical_reason(t.reason),
        "at_ns": t.at_ns,
        "attempt": t.attempt,
        "new_attempt": t.new_attempt,
        "worker_id": _text(t.worker_id),
        "error_category": t.error_category and str(t.error_category),
        "error_phase": t.error_phase and str(t.error_phase),
        "results": _results(t.results) if t.results is not None else None,
        "lease_owner": _text(t.lease_owner),
        "lease_expires_ns": t.lease_expires_ns,
    }


def json_value(value: Any) -> Any:
    """A JSON column's value: SQLite returns text, PostgreSQL's jsonb decoded objects."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


class _Reader:
    """Decodes fields one by one; a field that cannot be read gets its fallback and is
    named in :attr:`damaged`."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.damaged: list[str] = []

    def field(self, name: str, decode: Callable[[Any], T], fallback: T) -> T:
        try:
            return decode(self.row[name])
        except Exception:  # noqa: BLE001 - an unreadable stored value must not break the read
            self.damaged.append(name)
            return fallback


def _results_of(value: Any) -> tuple[ModuleResult, ...]:
    return tuple(ModuleResult.from_json(r) for r in json_value(value) or ())


def job_from_row(row: Row) -> Job:
    read = _Reader(row)
    job = Job(
        id=row["id"],
        project_id=row["project_id"],
        source=row["source"],
        modules=read.field("modules", lambda v: tuple(str(m) for m in json_value(v)), ()),
        options=read.field("options", lambda v: JobOptions.from_json(json_value(v)), JobOptions()),
        status=JobStatus(row["status"]),
        attempt=row["attempt"],
        created_ns=row["created_ns"],
        status_ns=row["status_ns"],
        queued_ns=row["queued_ns"],
        started_ns=row["started_ns"],
        finished_ns=row["finished_ns"],
        reason=row["reason"],
        error_category=read.field("error_category", lambda v: ErrorCategory(v) if v else None, None),
        error_phase=read.field("error_phase", lambda v: Phase(v) if v else None, None),
        results=read.field("results", _results_of, ()),
        trace=TraceContext(
            trace_id=row["trace_id"],
            span_id=row["root_span_id"],
            sampled=bool(row["trace_sampled"]),
            link=row["trace_link"],
        ),
        lease_owner=row["lease_owner"],
        lease_expires_ns=row["lease_expires_ns"],
        cancel_requested=row["cancel_requested"],
        cancel_requested_by=row["cancel_requested_by"],
        cancel_requested_ns=row["cancel_requested_ns"],
        worker_id=row["worker_id"],
    )
    damaged = [*row.get(UNDECODABLE, ()), *read.damaged]
    if damaged:
        return _damaged(job, list(dict.fromkeys(damaged)))
    return job


def _damaged(job: Job, fields: list[str]) -> Job:
    return replace(job, damaged=f"unreadable stored fields: {', '.join(fields)}")


def history_after(row: Row, job: Job, t: Transition) -> list[LifecycleEntry]:
    """The job's history after ``t``: the rows an ``apply_transition`` returned (as they
    stood before it: its own row is written by a trigger after the statement's reads), and
    the row of ``t`` itself, as that trigger writes it."""
    before = [entry_from_row(r) for r in json_value(row["history"]) or ()]
    # The time spent in status_from, as the trigger computes it: from when that status was
    # entered (the last transition's row; a cancel request is not one).
    entered = next((e.at_ns for e in reversed(before) if e.is_transition), job.status_ns)
    return [
        *before,
        LifecycleEntry(
            job_id=job.id,
            seq=(before[-1].seq if before else 0) + 1,
            status_from=t.status_from,
            status_to=job.status,
            reason=job.reason or "",
            at_ns=job.status_ns,
            duration_ms=max(0.0, (job.status_ns - entered) / 1e6),
            attempt=job.attempt,
            worker_id=job.worker_id,
            event=lifecycle_event(t.status_from, job.status),
        ),
    ]


def entry_from_row(row: Row) -> LifecycleEntry:
    event = row["event"]
    return LifecycleEntry(
        job_id=row["job_id"],
        seq=row["seq"],
        status_from=JobStatus(row["status_from"]) if row["status_from"] else None,
        status_to=JobStatus(row["status_to"]),
        reason=row["reason"],
        at_ns=row["at_ns"],
        duration_ms=row["duration_ms"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        event=LifecycleEvent(event) if event else None,
    )
