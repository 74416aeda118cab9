"""``orchestrator report``: the four operational questions, answered from finished jobs.

Both sources reduce to the same records (:class:`JobRecord`: the job's verdict, its
lifecycle history and its final attempt's module runs), and one function answers the
questions from them, so the store and the telemetry files give the same answers on the
same jobs:

* the **store** (default) holds every job of every host: the persisted history and
  module results;
* the **telemetry files** of this host (``--from files``) hold the root span of each
  sampled job that finished here (its span events are the persisted history) and the
  module spans.

Semantics, chosen so each number means one thing:

1. failed jobs by the phase they failed in (every phase, zeros included);
2. module runs of each job's final attempt, cancelled runs excluded (a run cut short
   says nothing about the module's runtime); an overrun is a run longer than the
   expected runtime it had;
3. failed jobs by error category (every category, zeros included), grouped
   transition/persistence vs module logic vs the rest; cancelled jobs are counted
   apart, they did not fail;
4. time per phase in lifecycle order, from the lifecycle history: create (pending),
   queued, execute (running until its last module ended), finalize (from there to the
   terminal transition), then attempts lost or requeued (a dead or stopped worker),
   kept apart so they do not inflate execute, and the total.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.markup import escape
from rich.text import Text

from orchestrator.cli import render
from orchestrator.cli.render import Column
from orchestrator.cli.spans import Span
from orchestrator.domain import ErrorCategory, InvalidRequest, Job, LifecycleEntry, Phase
from orchestrator.serialization import nanoseconds
from otel.vocabulary import Attr, SpanName

__all__ = [
    "CATEGORY_GROUPS",
    "JobRecord",
    "ModuleRun",
    "Step",
    "build_report",
    "parse_since",
    "print_report",
    "record_from_job",
    "records_from_spans",
]

FINISHED: Final = ("completed", "failed", "cancelled")

#: The groups of question 3, in the order they are shown; every category but
#: ``cancelled`` (counted apart: a cancelled job did not fail).
CATEGORY_GROUPS: Final[Mapping[str, tuple[ErrorCategory, ...]]] = {
    "transition/persistence": (ErrorCategory.TRANSITION, ErrorCategory.PERSISTENCE),
    "module logic": (ErrorCategory.MODULE, ErrorCategory.MODULE_TIMEOUT, ErrorCategory.MODULE_PANIC),
    "module not installed on the worker": (ErrorCategory.MODULE_UNAVAILABLE,),
    "queue (worker lost)": (ErrorCategory.QUEUE,),
    "internal": (ErrorCategory.INTERNAL,),
    "validation": (ErrorCategory.VALIDATION,),
    "webhook": (ErrorCategory.WEBHOOK,),
}

PHASE_ROWS: Final = ("create", "queued", "execute", "finalize", "execute (lost or requeued attempts)", "total")


@dataclass(frozen=True, slots=True)
class Step:
    """One row of a job's lifecycle history."""

    status_from: str | None
    status_to: str
    at_ns: int
    duration_ms: float
    attempt: int


@dataclass(frozen=True, slots=True)
class ModuleRun:
    module: str
    outcome: str
    started_ns: int
    duration_ms: float
    expected_ms: float | None
    attempt: int

    @property
    def end_ns(self) -> int:
        return self.started_ns + int(self.duration_ms * 1e6)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A finished job, as the report sees it (from either source)."""

    job_id: str
    project_id: str
    status: str
    attempt: int
    error_category: str | None
    error_phase: str | None
    created_ns: int
    finished_ns: int
    steps: tuple[Step, ...]
    #: The module runs of the job's final attempt.
    modules: tuple[ModuleRun, ...]


# -- sources ------------------------------------------------------------------------------


def record_from_job(job: Job, history: Sequence[LifecycleEntry]) -> JobRecord:
    """A finished job from the store: its row, its history, its module results."""
    return JobRecord(
        job_id=job.id,
        project_id=job.project_id,
        status=str(job.status),
        attempt=job.attempt,
        error_category=str(job.error_category) if job.error_category else None,
        error_phase=str(job.error_phase) if job.error_phase else None,
        created_ns=job.created_ns,
        finished_ns=job.finished_ns or job.status_ns,
        steps=tuple(
            Step(str(e.status_from) if e.status_from else None, str(e.status_to), e.at_ns, e.duration_ms, e.attempt)
            for e in history
            if e.status_from is not e.status_to  # a cancellation request changes no status
        ),
        modules=tuple(
            ModuleRun(r.module, str(r.outcome), r.started_ns, r.duration_ms, r.expected_ms, r.attempt)
            for r in job.results
            if r.attempt == job.attempt
        ),
    )


def records_from_spans(spans: Iterable[Span]) -> list[JobRecord]:
    """Finished jobs from exported spans: each root span (emitted once, at the terminal
    transition) with its lifecycle events, and the module spans of its final attempt."""
    roots: list[Span] = []
    modules: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for s in spans:
        if s.name == SpanName.JOB:
            roots.append(s)
        elif s.name == SpanName.MODULE:
            modules[(s.trace_id, str(s.attributes.get(Attr.JOB_ID)))].append(s)
    records: dict[str, JobRecord] = {}
    for root in roots:
        a = root.attributes
        job_id, attempt = str(a.get(Attr.JOB_ID, "")), int(a.get(Attr.ATTEMPT, 1))
        steps = [
            Step(
                None if e.attributes.get(Attr.STATUS_FROM) in (None, "none") else str(e.attributes[Attr.STATUS_FROM]),
                str(e.attributes.get(Attr.STATUS_TO, "")),
                e.time_ns,
                float(e.attributes.get(Attr.DURATION_MS, 0.0)),
                int(e.attributes.get(Attr.ATTEMPT, 1)),
            )
            for e in root.events
            if Attr.STATUS_TO in e.attributes
        ]
        runs = [
            _module_run(m)
            for m in modules[(root.trace_id, job_id)]
            if int(m.attributes.get(Attr.ATTEMPT, 1)) == attempt
        ]
        records[job_id] = JobRecord(
            job_id=job_id,
            project_id=str(a.get(Attr.PROJECT_ID, "")),
            status=str(a.get(Attr.STATUS, "")),
            attempt=attempt,
            error_category=str(a[Attr.ERROR_CATEGORY]) if a.get(Attr.ERROR_CATEGORY) else None,
            error_phase=str(a[Attr.PHASE]) if a.get(Attr.PHASE) else None,
            created_ns=root.start_ns,
            finished_ns=root.end_ns,
            steps=tuple(s for s in steps if s.status_from != s.status_to),
            modules=tuple(sorted(runs, key=lambda r: (r.started_ns, r.module))),
        )
    return list(records.values())  # a root exported twice (a re-emission) counts once


def _module_run(s: Span) -> ModuleRun:
    durations = [e.attributes[Attr.DURATION_MS] for e in s.events if Attr.DURATION_MS in e.attributes]
    expected = s.attributes.get(Attr.EXPECTED_MS)
    return ModuleRun(
        module=str(s.attributes.get(Attr.MODULE, "?")),
        outcome=str(s.attributes.get(Attr.OUTCOME, "")),
        started_ns=s.start_ns,
        duration_ms=float(durations[-1]) if durations else s.duration_ms,
        expected_ms=float(expected) if expected is not None else None,
        attempt=int(s.attributes.get(Attr.ATTEMPT, 1)),
    )


# -- filters ------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The latest --since that can be printed back (9999-12-31T23:59:59-12:00 is year 10000 in UTC).
_LATEST_NS: Final = int(dt.datetime(9999, 12, 31, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def parse_since(text: str, now_ns: int) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``6h``, ``2d``, ``1w``) or
    an ISO 8601 time (``2026-11-30``, ``2026-11-30T12:00:00Z``; UTC when no zone)."""
    match = _DURATION.match(text)
    if match:
        # No job finished before 1970: a longer window (99999999d, or so many digits the
        # number is infinite) is every job, not a date before year 1.
        back_s = min(float(match.group(1)) * _UNIT_SECONDS[match.group(2)], now_ns / 1e9)
        return max(0, now_ns - int(back_s * 1e9))
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--since {text!r}: expected a duration (30m, 6h, 2d) or an ISO time (2026-11-30T12:00:00Z)"
        ) from None
    # In integers: through a float, most microseconds came out tens of nanoseconds off.
    return min(max(0, nanoseconds(when)), _LATEST_NS)


def select(records: Iterable[JobRecord], *, since_ns: int | None, project_id: str | None) -> list[JobRecord]:
    """Finished jobs in the window (by when they finished) and of the project."""
    return sorted(
        (
            r
            for r in records
            if r.status in FINISHED
            and (since_ns is None or r.finished_ns >= since_ns)
            and (project_id is None or r.project_id == project_id)
        ),
        key=lambda r: (r.finished_ns, r.job_id),
    )


# -- the answers --------------------------------------------------------------------------


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(_percentile(values, 50), 1),
        "p95_ms": round(_percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


def build_report(records: Sequence[JobRecord], *, source: str = "", where: str = "") -> dict[str, Any]:
    """The answers, as JSON-ready data (``report --json`` prints exactly this)."""
    by_status = Counter(r.status for r in records)
    failed = [r for r in records if r.status == "failed"]
    return {
        "source": source,
        "where": where,
        "jobs": len(records),
        "by_status": {s: by_status.get(s, 0) for s in FINISHED},
        "failures_by_phase": _q1(failed),
        "modules": _q2(records),
        **_q3(records),
        "time_in_phase": _q4(records),
    }


def _q1(failed: Sequence[JobRecord]) -> list[dict[str, Any]]:
    counts = Counter(r.error_phase or "unknown" for r in failed)
    rows = [{"phase": str(p), "failures": counts.pop(str(p), 0)} for p in Phase]
    rows += [{"phase": p, "failures": n} for p, n in sorted(counts.items())]  # a phase this version does not know
    return rows


def _q2(records: Sequence[JobRecord]) -> list[dict[str, Any]]:
    runs: dict[str, list[ModuleRun]] = defaultdict(list)
    cancelled: Counter[str] = Counter()
    for record in records:
        for run in record.modules:
            if run.outcome == "cancelled":
                cancelled[run.module] += 1
            else:
                runs[run.module].append(run)
    rows = []
    for name in sorted(set(runs) | set(cancelled)):
        measured = runs[name]
        overruns = sum(1 for r in measured if r.expected_ms is not None and r.duration_ms > r.expected_ms)
        expected = Counter(r.expected_ms for r in measured if r.expected_ms is not None).most_common(1)
        stats = _stats([r.duration_ms for r in measured])
        rows.append(
            {
                "module": name,
                "runs": len(measured),
                "overruns": overruns,
                "overrun_rate": round(overruns / len(measured), 3) if measured else 0.0,
                "p50_ms": stats["p50_ms"],
                "p95_ms": stats["p95_ms"],
                "max_ms": stats["max_ms"],
                "expected_ms": expected[0][0] if expected else None,
                "cancelled_runs": cancelled[name],
            }
        )
    rows.sort(key=lambda r: (-r["overrun_rate"], -r["overruns"], r["module"]))
    return rows


def _q3(records: Sequence[JobRecord]) -> dict[str, Any]:
    ids: dict[str, list[str]] = {str(c): [] for c in ErrorCategory if c is not ErrorCategory.CANCELLED}
    for r in records:
        if r.status == "failed":
            ids.setdefault(r.error_category or str(ErrorCategory.INTERNAL), []).append(r.job_id)
    cancelled = [r.job_id for r in records if r.status == "cancelled"]
    categories: list[dict[str, Any]] = [
        {"category": str(c), "group": group, "failures": len(ids[str(c)]), "jobs": ids[str(c)]}
        for group, members in CATEGORY_GROUPS.items()
        for c in members
    ]
    known = {row["category"] for row in categories}
    categories += [  # a category this version does not know: shown, never hidden
        {"category": c, "group": c, "failures": len(found), "jobs": found} for c, found in ids.items() if c not in known
    ]
    groups: dict[str, int] = {}
    for row in categories:
        groups[row["group"]] = groups.get(row["group"], 0) + row["failures"]
    return {
        "failures_by_category": categories,
        "failures_by_group": groups,
        "cancelled": {"count": len(cancelled), "jobs": cancelled},
    }


def _q4(records: Sequence[JobRecord]) -> list[dict[str, Any]]:
    values: dict[str, list[float]] = {name: [] for name in PHASE_ROWS}
    for r in records:
        for step in r.steps:
            if step.status_from == "pending" and step.status_to == "queued":
                values["create"].append(step.duration_ms)
            elif step.status_from == "queued" and step.status_to == "running":
                values["queued"].append(step.duration_ms)
            elif step.status_from == "running":
                if _lost(r, step):
                    values["execute (lost or requeued attempts)"].append(step.duration_ms)
                else:
                    _split_running(r, step, values)
        values["total"].append((r.finished_ns - r.created_ns) / 1e6)
    return [{"phase": name, **_stats(values[name])} for name in PHASE_ROWS]


def _lost(record: JobRecord, step: Step) -> bool:
    """An attempt that ended without its worker: requeued (lease expired, worker shut
    down) or failed as worker_lost by another worker's reaper."""
    if step.status_to == "queued":
        return True
    final = step is record.steps[-1]
    return final and record.status == "failed" and record.error_category == str(ErrorCategory.QUEUE)


def _split_running(record: JobRecord, step: Step, values: dict[str, list[float]]) -> None:
    """A worker's own attempt: execute until its last module ended, finalize after."""
    start_ns = step.at_ns - int(step.duration_ms * 1e6)
    ends = [m.end_ns for m in record.modules if m.attempt == step.attempt]
    if not ends:
        values["execute"].append(step.duration_ms)
        return
    execute_ms = min(max(0.0, (max(ends) - start_ns) / 1e6), step.duration_ms)
    values["execute"].append(execute_ms)
    values["finalize"].append(step.duration_ms - execute_ms)


# -- the terminal -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def print_report(report: dict[str, Any]) -> None:
    c = render.console
    statuses = ", ".join(f"{n} {s}" for s, n in report["by_status"].items())
    c.print(f"[bold]report[/] - {report['jobs']} finished jobs: {statuses}")
    if report.get("where"):
        c.print(f"[dim]from {escape(report['where'])}[/]")
    c.print("\n[bold]1. Which phase fails most often?[/]")
    for row in sorted(report["failures_by_phase"], key=lambda r: -r["failures"]):
        c.print(f"   {row['phase']:<10} {row['failures']} failed job(s)", style="" if row["failures"] else "dim")
    c.print("\n[bold]2. Which modules exceed their expected runtime?[/] [dim](final attempts, cancelled runs apart)[/]")
    columns = [Column("module"), *(Column(h, "right") for h in ("runs", "overruns", "p50", "p95", "max", "expected"))]
    render.print_table(
        [*columns, Column("cancelled", "right")],
        (
            [
                Text(row["module"], style="yellow" if row["overruns"] else ""),
                str(row["runs"]),
                Text(str(row["overruns"]), style="yellow" if row["overruns"] else ""),
                _ms(row["p50_ms"]),
                _ms(row["p95_ms"]),
                _ms(row["max_ms"]),
                f"{row['expected_ms']:,.0f} ms" if row["expected_ms"] is not None else "-",
                str(row["cancelled_runs"]),
            ]
            for row in report["modules"]
        ),
    )
    c.print("\n[bold]3. Why did jobs fail: transition/persistence or module logic?[/]")
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in report["failures_by_category"]:
        by_group[row["group"]].append(row)
    for group, rows in by_group.items():
        total = report["failures_by_group"][group]
        detail = ", ".join(f"{r['category']} {r['failures']}" for r in rows) if len(rows) > 1 else ""
        c.print(f"   {group:<34} {total:>4}  {detail}", style="" if total else "dim")
    cancelled = report["cancelled"]["count"]
    c.print(f"   {'cancelled (not failures)':<34} {cancelled:>4}", style="" if cancelled else "dim")
    if any(r["failures"] for r in report["failures_by_category"]):
        c.print("   [dim]which jobs: orchestrator jobs --error-category CATEGORY (or report --json)[/]")
    c.print("\n[bold]4. How long do jobs spend in each phase?[/] [dim](lifecycle order)[/]")
    render.print_table(
        [Column("phase"), *(Column(h, "right") for h in ("count", "p50", "p95", "max"))],
        (
            [
                Text(row["phase"], style="" if row["count"] else "dim"),
                str(row["count"]),
                _ms(row["p50_ms"]),
                _ms(row["p95_ms"]),
                _ms(row["max_ms"]),
            ]
            for row in report["time_in_phase"]
        ),
    )
