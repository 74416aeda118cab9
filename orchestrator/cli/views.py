"""Terminal views over the embedded telemetry files: a job's trace waterfall and the
report that answers the four operational questions.

Both read only what was exported (``<data dir>/telemetry/traces.jsonl`` and its
rotated backups, in the OTLP/JSON encoding), so they show what an operator would
see in a tracing backend, without one.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from rich.table import Table
from rich.text import Text

from orchestrator.cli import render
from orchestrator.cli.main import Context, print_json
from orchestrator.domain import ErrorCategory, InvalidRequest, JobNotFound
from otel.files import SIGNAL_FILES, read_jsonl
from otel.vocabulary import Attr, LifecycleEvent, ModuleEvent, SpanName

__all__ = ["Span", "build_report", "demo_epilogue", "load_spans", "report_command", "trace_command"]

_STATUS_ERROR = 2


@dataclass
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event]
    status_code: int
    status_message: str
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def is_error(self) -> bool:
        return self.status_code == _STATUS_ERROR


def _value(v: Mapping[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items}


def load_spans(telemetry_dir: Path) -> Iterator[Span]:
    for request in read_jsonl(telemetry_dir / SIGNAL_FILES["traces"]):
        for resource_spans in request.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for s in scope_spans.get("spans", []):
                    yield Span(
                        trace_id=s.get("traceId", ""),
                        span_id=s.get("spanId", ""),
                        parent_id=s.get("parentSpanId", ""),
                        name=s.get("name", ""),
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes=_attrs(s.get("attributes", [])),
                        events=[
                            Event(e.get("name", ""), int(e.get("timeUnixNano", 0)), _attrs(e.get("attributes", [])))
                            for e in s.get("events", [])
                        ],
                        status_code=int(s.get("status", {}).get("code", 0)),
                        status_message=s.get("status", {}).get("message", ""),
                    )


# -- trace --------------------------------------------------------------------------------


def job_trace(spans: Iterable[Span], job_id: str) -> list[Span]:
    """Every span of the job's trace (found through the job_id attribute)."""
    spans = list(spans)
    trace_ids = {s.trace_id for s in spans if s.attributes.get(Attr.JOB_ID) == job_id}
    return [s for s in spans if s.trace_id in trace_ids]


def _tree(spans: list[Span]) -> list[Span]:
    by_id = {s.span_id: s for s in spans}
    roots = []
    for s in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(s.parent_id)
        if parent is not None and parent is not s:
            parent.children.append(s)
        else:
            roots.append(s)
    return roots


def _label(s: Span) -> str:
    if s.name == SpanName.MODULE:
        return f"module {s.attributes.get(Attr.MODULE, '?')}"
    if s.name == SpanName.EXECUTE:
        return f"execute (attempt {s.attributes.get(Attr.ATTEMPT, '?')})"
    if s.name == SpanName.JOB:
        return f"job {s.attributes.get(Attr.PROJECT_ID, '')} [{s.attributes.get(Attr.STATUS, '?')}]"
    return s.name.removeprefix("job.")


def render_waterfall(spans: list[Span], *, width: int = 40) -> list[Text]:
    roots = _tree(spans)
    if not roots:
        return []
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    total = max(end - start, 1)
    lines: list[Text] = []

    def bar(s: Span) -> str:
        left = int((s.start_ns - start) / total * width)
        length = max(1, round((s.end_ns - s.start_ns) / total * width))
        return " " * left + "█" * min(length, width - left) + " " * max(0, width - left - length)

    def walk(s: Span, depth: int) -> None:
        style = "red" if s.is_error else ("yellow" if _overran(s) else "")
        label = ("  " * depth + _label(s))[:38].ljust(38)
        line = Text(label, style=style)
        line.append(f" {bar(s)} ", style="red" if s.is_error else "cyan")
        line.append(f"{s.duration_ms:9.1f} ms", style=style)
        error_type = s.attributes.get(Attr.ERROR_TYPE)
        if error_type:
            line.append(f"  error.type={error_type}", style="red")
        if _overran(s):
            line.append("  overrun", style="yellow")
        lines.append(line)
        if s.name == SpanName.JOB:
            for e in s.events:
                offset = (e.time_ns - s.start_ns) / 1e6
                reason = e.attributes.get(Attr.REASON, "")
                style = "red" if e.name == LifecycleEvent.FAIL else "dim"
                lines.append(Text(f"{'  ' * (depth + 1)}@{offset:8.1f} ms  {e.name}  {reason}", style=style))
        for child in s.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def _overran(s: Span) -> bool:
    return any(e.name == ModuleEvent.OVERRUN for e in s.events)


async def trace_command(ctx: Context) -> int:
    spans = await anyio.to_thread.run_sync(lambda: list(load_spans(ctx.settings.telemetry_dir)))
    found = job_trace(spans, ctx.args.job_id)
    if not found:
        if not spans:
            raise InvalidRequest(
                f"no telemetry files in {ctx.settings.telemetry_dir} (the embedded default writes them when "
                "no OTLP endpoint is set)",
                field="job_id",
            )
        raise JobNotFound(ctx.args.job_id)
    if ctx.args.json:
        print_json([_span_json(s) for s in sorted(found, key=lambda s: s.start_ns)])
        return 0
    print_trace(found)
    return 0


def print_trace(spans: list[Span]) -> None:
    trace_id = spans[0].trace_id
    roots = [s for s in spans if s.name == SpanName.JOB]
    job_id = roots[0].attributes.get(Attr.JOB_ID, "") if roots else ""
    render.console.print(f"[bold]trace {trace_id}[/]  job {job_id}")
    if not roots:
        render.console.print("[yellow]the job's root span is not exported yet: the job has not finished[/]")
    for line in render_waterfall(spans):
        render.console.print(line, crop=False, overflow="ignore")


def _span_json(s: Span) -> dict[str, Any]:
    return {
        "trace_id": s.trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_id,
        "name": s.name,
        "start_ns": s.start_ns,
        "end_ns": s.end_ns,
        "duration_ms": round(s.duration_ms, 3),
        "attributes": s.attributes,
        "status_code": s.status_code,
        "status_message": s.status_message,
        "events": [{"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in s.events],
    }


# -- report -------------------------------------------------------------------------------

#: How failed jobs are grouped for question 3.
CATEGORY_GROUPS: Mapping[str, str] = {
    ErrorCategory.TRANSITION: "transition/persistence",
    ErrorCategory.PERSISTENCE: "transition/persistence",
    ErrorCategory.MODULE: "module logic",
    ErrorCategory.MODULE_TIMEOUT: "module timeout/panic",
    ErrorCategory.MODULE_PANIC: "module timeout/panic",
    ErrorCategory.QUEUE: "queue (worker lost)",
    ErrorCategory.CANCELLED: "cancelled",
}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def build_report(spans: Iterable[Span]) -> dict[str, Any]:
    roots: list[Span] = []
    modules: dict[str, list[Span]] = defaultdict(list)
    phases: dict[str, list[float]] = defaultdict(list)
    for s in spans:
        if s.name == SpanName.JOB:
            roots.append(s)
        elif s.name == SpanName.MODULE:
            modules[str(s.attributes.get(Attr.MODULE, "?"))].append(s)
        elif s.name in (SpanName.CREATE, SpanName.QUEUED, SpanName.EXECUTE, SpanName.FINALIZE, SpanName.NOTIFY):
            phases[s.name.removeprefix("job.")].append(s.duration_ms)
    time_in_status: dict[str, list[float]] = defaultdict(list)
    for root in roots:
        for e in root.events:
            status_from = e.attributes.get(Attr.STATUS_FROM)
            if status_from and status_from != "none":
                time_in_status[f"status {status_from}"].append(float(e.attributes.get(Attr.DURATION_MS, 0.0)))

    failed = [r for r in roots if r.attributes.get(Attr.STATUS) == "failed"]
    by_phase = Counter(str(r.attributes.get(Attr.PHASE, "unknown")) for r in failed)
    by_group: dict[str, list[str]] = defaultdict(list)
    by_category: Counter[str] = Counter()
    for r in roots:
        category = r.attributes.get(Attr.ERROR_CATEGORY)
        if r.attributes.get(Attr.STATUS) in ("failed", "cancelled") and category:
            by_category[str(category)] += 1
            by_group[CATEGORY_GROUPS.get(str(category), "other")].append(str(r.attributes.get(Attr.JOB_ID)))

    module_rows: list[dict[str, Any]] = []
    for name, runs in sorted(modules.items()):
        durations = [s.duration_ms for s in runs]
        expected = next((s.attributes.get(Attr.EXPECTED_MS) for s in runs if Attr.EXPECTED_MS in s.attributes), None)
        overruns = sum(1 for s in runs if _overran(s))
        module_rows.append(
            {
                "module": name,
                "runs": len(runs),
                "overruns": overruns,
                "overrun_rate": round(overruns / len(runs), 3),
                "p95_ms": round(_percentile(durations, 95), 1),
                "max_ms": round(max(durations), 1),
                "expected_ms": expected,
            }
        )
    module_rows.sort(key=lambda r: (-r["overrun_rate"], r["module"]))

    phase_rows = [
        {
            "phase": name,
            "count": len(values),
            "p50_ms": round(_percentile(values, 50), 1),
            "p95_ms": round(_percentile(values, 95), 1),
            "max_ms": round(max(values), 1),
        }
        for name, values in [*sorted(phases.items()), *sorted(time_in_status.items())]
        if values
    ]
    return {
        "jobs": len(roots),
        "by_status": dict(Counter(str(r.attributes.get(Attr.STATUS)) for r in roots)),
        "failures_by_phase": [{"phase": p, "failures": n} for p, n in by_phase.most_common()],
        "modules": module_rows,
        "failed_jobs_by_category": dict(by_category.most_common()),
        "failed_jobs_by_group": {g: {"count": len(ids), "jobs": ids[:5]} for g, ids in sorted(by_group.items())},
        "time_in_phase": phase_rows,
    }


def print_report(report: dict[str, Any]) -> None:
    c = render.console
    c.print(
        f"[bold]report[/] - {report['jobs']} finished jobs: "
        + ", ".join(f"{n} {s}" for s, n in sorted(report["by_status"].items()))
    )
    c.print("\n[bold]1. Which phase fails most often?[/]")
    if report["failures_by_phase"]:
        for row in report["failures_by_phase"]:
            c.print(f"   {row['phase']:<10} {row['failures']} failed job(s)")
    else:
        c.print("   no failed jobs")
    c.print("\n[bold]2. Which modules exceed their expected runtime?[/]")
    table = Table(box=None, header_style="dim", pad_edge=False)
    for column in ("module", "runs", "overruns", "p95", "max", "expected"):
        table.add_column(column, justify="left" if column == "module" else "right")
    for row in report["modules"]:
        style = "yellow" if row["overruns"] else ""
        expected = f"{row['expected_ms']:,.0f} ms" if row["expected_ms"] is not None else "-"
        table.add_row(
            row["module"],
            str(row["runs"]),
            str(row["overruns"]),
            f"{row['p95_ms']:,.0f} ms",
            f"{row['max_ms']:,.0f} ms",
            expected,
            style=style,
        )
    c.print(table)
    c.print("\n[bold]3. Why did jobs fail: transition/persistence or module logic?[/]")
    if report["failed_jobs_by_group"]:
        for group, row in report["failed_jobs_by_group"].items():
            c.print(f"   {group:<24} {row['count']}  e.g. {', '.join(row['jobs'][:2])}")
    else:
        c.print("   no failed or cancelled jobs")
    c.print("\n[bold]4. How long do jobs spend in each phase?[/]")
    table = Table(box=None, header_style="dim", pad_edge=False)
    for column in ("phase", "count", "p50", "p95", "max"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for row in report["time_in_phase"]:
        table.add_row(
            row["phase"],
            str(row["count"]),
            f"{row['p50_ms']:,.1f} ms",
            f"{row['p95_ms']:,.1f} ms",
            f"{row['max_ms']:,.1f} ms",
        )
    c.print(table)


async def report_command(ctx: Context) -> int:
    spans = await anyio.to_thread.run_sync(lambda: list(load_spans(ctx.settings.telemetry_dir)))
    report = build_report(spans)
    if ctx.args.json:
        print_json(report)
    else:
        if not spans:
            render.err_console.print(f"no telemetry in {ctx.settings.telemetry_dir}", style="yellow")
        print_report(report)
    return 0


async def demo_epilogue(ctx: Context) -> None:
    spans = await anyio.to_thread.run_sync(lambda: list(load_spans(ctx.settings.telemetry_dir)))
    failed = [s for s in spans if s.name == SpanName.JOB and s.attributes.get(Attr.STATUS) == "failed"]
    if failed:
        render.console.rule("trace of the failed job")
        job_id = str(failed[-1].attributes.get(Attr.JOB_ID))
        print_trace(job_trace(spans, job_id))
        render.console.print(f"[dim](orchestrator trace {job_id})[/]")
    render.console.rule("report")
    print_report(build_report(spans))
    render.console.print("[dim](orchestrator report)[/]")
