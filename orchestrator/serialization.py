"""The JSON form of jobs and lifecycle entries, shared by every entry point (HTTP API,
CLI ``--json``) and by webhook payloads, with ONE timestamp format.

This module sits beside the domain: it imports the domain and nothing else of ours, so
the API, the CLI and the stores can all use it without importing each other.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.domain import Job, LifecycleEntry

__all__ = ["entry_json", "job_json", "nanoseconds", "timestamp"]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp(ns: int) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: ``2026-11-27T10:28:31.777000Z``.

    Used for every timestamp a client or a webhook receiver sees. Cut to the microsecond
    in integers (a float rounds, up as often as down): a job's ``created_at`` given back
    as ``--since`` keeps that job."""
    return (_EPOCH + dt.timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def nanoseconds(when: dt.datetime) -> int:
    """Nanoseconds since the epoch of a time (UTC when it has no zone), in integers."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _optional(ns: int | None) -> str | None:
    return timestamp(ns) if ns else None


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "project_id": job.project_id,
        "source": job.source,
        "modules": list(job.modules),
        "options": job.options.to_json(),
        "status": str(job.status),
        "attempt": job.attempt,
        "reason": job.reason,
        "error_category": job.error_category and str(job.error_category),
        "error_phase": job.error_phase and str(job.error_phase),
        "created_at": timestamp(job.created_ns),
        "queued_at": _optional(job.queued_ns),
        "started_at": _optional(job.started_ns),
        "finished_at": _optional(job.finished_ns),
        "trace_id": job.trace.trace_id,
        "root_span_id": job.trace.span_id,
        "sampled": job.trace.sampled,
        "cancel_requested": job.cancel_requested,
        "cancel_requested_by": job.cancel_requested_by,
        "cancel_requested_at": _optional(job.cancel_requested_ns),
        "damaged": job.damaged,
        "results": [r.to_json() for r in job.results],
    }


def entry_json(entry: LifecycleEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "event": str(entry.event),
        "status_from": entry.status_from and str(entry.status_from),
        "status_to": str(entry.status_to),
        "reason": entry.reason,
        "at": timestamp(entry.at_ns),
        "duration_ms": round(entry.duration_ms, 3),
        "attempt": entry.attempt,
        "worker_id": entry.worker_id,
    }
