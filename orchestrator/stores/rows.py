"""Mapping between stored rows and domain objects, shared by every store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

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

__all__ = ["HISTORY_COLUMNS", "JOB_COLUMNS", "dump_results", "entry_from_row", "job_from_row", "job_to_row"]

JOB_COLUMNS = (
    "id",
    "project_id",
    "source",
    "modules",
    "options",
    "status",
    "attempt",
    "created_ns",
    "status_ns",
    "queued_ns",
    "started_ns",
    "finished_ns",
    "reason",
    "error_category",
    "error_phase",
    "results",
    "trace_id",
    "root_span_id",
    "trace_sampled",
    "trace_link",
    "lease_owner",
    "lease_expires_ns",
    "cancel_requested",
)

HISTORY_COLUMNS = (
    "job_id",
    "seq",
    "status_from",
    "status_to",
    "reason",
    "at_ns",
    "duration_ms",
    "attempt",
    "worker_id",
)


def iso(ns: int) -> str:
    """An RFC 3339 UTC timestamp (microseconds) for payloads."""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def outbox_params(t: Transition) -> dict[str, str]:
    """The webhook event a transition emits, for the outbox insert of its statement."""
    return {"event": str(lifecycle_event(t.status_from, t.status_to)), "timestamp": iso(t.at_ns)}


def transition_params(t: Transition) -> dict[str, Any]:
    """The parameters of a transition's statements (update, history row, outbox)."""
    return {
        "job_id": t.job_id,
        "status_from": str(t.status_from),
        "status_to": str(t.status_to),
        "reason": t.reason,
        "at_ns": t.at_ns,
        "duration_ms": t.duration_ms,
        "attempt": t.attempt,
        "new_attempt": t.new_attempt,
        "worker_id": t.worker_id,
        "error_category": t.error_category and str(t.error_category),
        "error_phase": t.error_phase and str(t.error_phase),
        "results": dump_results(t.results) if t.results is not None else None,
        "lease_owner": t.lease_owner,
        "lease_expires_ns": t.lease_expires_ns,
        **outbox_params(t),
    }


def dump_results(results: tuple[ModuleResult, ...]) -> str:
    return json.dumps([r.to_json() for r in results], separators=(",", ":"))


def job_to_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "project_id": job.project_id,
        "source": job.source,
        "modules": json.dumps(list(job.modules)),
        "options": json.dumps(job.options.to_json(), separators=(",", ":")),
        "status": str(job.status),
        "attempt": job.attempt,
        "created_ns": job.created_ns,
        "status_ns": job.status_ns,
        "queued_ns": job.queued_ns,
        "started_ns": job.started_ns,
        "finished_ns": job.finished_ns,
        "reason": job.reason,
        "error_category": job.error_category and str(job.error_category),
        "error_phase": job.error_phase and str(job.error_phase),
        "results": dump_results(job.results),
        "trace_id": job.trace.trace_id,
        "root_span_id": job.trace.span_id,
        "trace_sampled": job.trace.sampled,
        "trace_link": job.trace.link,
        "lease_owner": job.lease_owner,
        "lease_expires_ns": job.lease_expires_ns,
        "cancel_requested": job.cancel_requested,
    }


def json_value(value: Any) -> Any:
    """A JSON column's value: SQLite returns text, PostgreSQL's JSONB decoded objects."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def job_from_row(row: Mapping[str, Any]) -> Job:
    return Job(
        id=row["id"],
        project_id=row["project_id"],
        source=row["source"],
        modules=tuple(json_value(row["modules"])),
        options=JobOptions.from_json(json_value(row["options"])),
        status=JobStatus(row["status"]),
        attempt=row["attempt"],
        created_ns=row["created_ns"],
        status_ns=row["status_ns"],
        queued_ns=row["queued_ns"],
        started_ns=row["started_ns"],
        finished_ns=row["finished_ns"],
        reason=row["reason"],
        error_category=ErrorCategory(row["error_category"]) if row["error_category"] else None,
        error_phase=Phase(row["error_phase"]) if row["error_phase"] else None,
        results=tuple(ModuleResult.from_json(r) for r in json_value(row["results"]) or ()),
        trace=TraceContext(
            trace_id=row["trace_id"],
            span_id=row["root_span_id"],
            sampled=bool(row["trace_sampled"]),
            link=row["trace_link"],
        ),
        lease_owner=row["lease_owner"],
        lease_expires_ns=row["lease_expires_ns"],
        cancel_requested=row["cancel_requested"],
    )


def entry_from_row(row: Mapping[str, Any]) -> LifecycleEntry:
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
    )
