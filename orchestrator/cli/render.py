"""Terminal rendering of jobs, module results and lifecycle histories (rich)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.domain import Job, JobStatus, LifecycleEntry, ModuleOutcome

__all__ = ["console", "entry_json", "events_table", "job_json", "job_panel", "jobs_table", "status_text"]

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False)

_STATUS_STYLE = {
    JobStatus.PENDING: "dim",
    JobStatus.QUEUED: "cyan",
    JobStatus.RUNNING: "bold blue",
    JobStatus.COMPLETED: "bold green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "yellow",
}
_OUTCOME_STYLE = {
    ModuleOutcome.OK: "green",
    ModuleOutcome.ERROR: "red",
    ModuleOutcome.TIMEOUT: "red",
    ModuleOutcome.PANIC: "bold red",
    ModuleOutcome.CANCELLED: "yellow",
}


def status_text(status: JobStatus) -> Text:
    return Text(str(status), style=_STATUS_STYLE[status])


def _ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


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
        "created_at": _ts(job.created_ns),
        "queued_at": _ts(job.queued_ns) if job.queued_ns else None,
        "started_at": _ts(job.started_ns) if job.started_ns else None,
        "finished_at": _ts(job.finished_ns) if job.finished_ns else None,
        "trace_id": job.trace.trace_id,
        "root_span_id": job.trace.span_id,
        "sampled": job.trace.sampled,
        "cancel_requested": job.cancel_requested,
        "results": [r.to_json() for r in job.results],
    }


def entry_json(entry: LifecycleEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "status_from": entry.status_from and str(entry.status_from),
        "status_to": str(entry.status_to),
        "reason": entry.reason,
        "at": _ts(entry.at_ns),
        "duration_ms": round(entry.duration_ms, 3),
        "attempt": entry.attempt,
        "worker_id": entry.worker_id,
    }


def modules_table(job: Job) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for column in ("module", "outcome", "duration", "expected", "detail"):
        table.add_column(column, justify="right" if column in ("duration", "expected") else "left")
    for r in job.results:
        duration = Text(f"{r.duration_ms:,.0f} ms", style="bold yellow" if r.overran else "")
        if r.overran:
            duration.append(" overrun", style="yellow")
        detail = r.error or ", ".join(f"{k}={v}" for k, v in list(_scalars(r.summary))[:3])
        table.add_row(
            r.module,
            Text(str(r.outcome), style=_OUTCOME_STYLE[r.outcome]),
            duration,
            f"{r.expected_ms:,.0f} ms",
            Text(detail, overflow="ellipsis", no_wrap=True),
        )
    return table


def _scalars(summary: Any) -> Sequence[tuple[str, Any]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def job_panel(job: Job) -> None:
    """A job's summary: status, reason, per-module outcomes."""
    head = Text.assemble(
        (f"{job.project_id}", "bold"),
        "  ",
        status_text(job.status),
        f"  {job.id}",
    )
    console.print(head)
    if job.reason:
        style = "red" if job.status is JobStatus.FAILED else ""
        console.print(Text(f"  reason: {job.reason}", style=style))
    if job.error_category:
        console.print(f"  error: {job.error_category} (phase {job.error_phase})")
    console.print(f"  trace: {job.trace.trace_id}  attempt: {job.attempt}")
    if job.results:
        console.print(modules_table(job), style="", crop=False)


def jobs_table(jobs: Sequence[Job]) -> Table:
    table = Table(box=None, header_style="dim")
    for column in ("id", "project", "status", "attempt", "created", "reason"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.id,
            job.project_id,
            status_text(job.status),
            str(job.attempt),
            _ts(job.created_ns),
            Text(job.reason or "", overflow="ellipsis", no_wrap=True),
        )
    return table


def events_table(entries: Sequence[LifecycleEntry]) -> Table:
    table = Table(box=None, header_style="dim")
    for column in ("#", "at", "from", "to", "time in from", "attempt", "reason"):
        table.add_column(column, justify="right" if column in ("#", "time in from", "attempt") else "left")
    for e in entries:
        table.add_row(
            str(e.seq),
            _ts(e.at_ns),
            str(e.status_from or "-"),
            status_text(e.status_to),
            f"{e.duration_ms:,.1f} ms",
            str(e.attempt),
            e.reason,
        )
    return table
