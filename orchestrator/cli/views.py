"""``orchestrator trace`` and ``orchestrator report``: what an operator would see in a
tracing backend, without one.

``trace`` finds the job in the store (its trace id, its status) and draws the spans of
that trace from this host's telemetry files. ``report`` answers the four operational
questions from the store (every host's jobs) or from the telemetry files.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from rich.markup import escape

from orchestrator.bootstrap import build_store
from orchestrator.cli import render, report
from orchestrator.cli.ids import resolve_job
from orchestrator.cli.main import Context, print_json
from orchestrator.cli.spans import Event, Span, job_trace, load_spans
from orchestrator.cli.waterfall import render_waterfall, span_json
from orchestrator.domain import InvalidRequest, Job, JobNotFound, JobStatus, LifecycleEntry, now_ns
from orchestrator.settings import Settings
from orchestrator.stores import JobStore
from orchestrator.tracing import SpanRecord, spans_from_store
from otel.vocabulary import Attr, SpanName

__all__ = [
    "Event",
    "Span",
    "build_report",
    "demo_epilogue",
    "job_trace",
    "load_spans",
    "report_command",
    "store_description",
    "trace_command",
]

build_report = report.build_report


def store_description(settings: Settings) -> str:
    """Which store a command looked in, for messages (never the credentials)."""
    if settings.database_url is None:
        missing = "" if settings.database_path.is_file() else " (which does not exist)"
        return f"the SQLite database {settings.database_path}{missing}"
    parts = urlsplit(settings.database_url.get_secret_value())
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {parts.hostname or 'localhost'}{port}{parts.path or ''}"


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[JobStore | None]:
    """The store to read, or None when the embedded database does not exist (a read
    must not create an empty database in a mistyped data directory)."""
    if settings.database_url is None and not settings.database_path.is_file():
        yield None
        return
    store = build_store(settings)
    await store.open(migrate=False)
    try:
        yield store
    finally:
        await store.close()


# -- trace --------------------------------------------------------------------------------


async def trace_command(ctx: Context) -> int:
    settings, wanted = ctx.settings, ctx.args.job_id.strip()
    async with open_store(settings) as store:
        job = await _find(store, wanted)
        history = await store.history(job.id) if store is not None and job is not None else []
    spans = await anyio.to_thread.run_sync(lambda: list(load_spans(settings.telemetry_dir)))
    found = job_trace(spans, job.id if job else wanted, job.trace.trace_id if job else None)
    drawn = _from_store(found, job, history)
    found = [*found, *drawn]
    if not found:
        raise InvalidRequest(_no_spans(job, wanted, settings), field="job_id")
    if ctx.args.json:
        print_json([span_json(s) for s in sorted(found, key=lambda s: s.start_ns)])
        return 0
    if drawn and job is not None:
        finished = render.timestamp(job.finished_ns) if job.finished_ns else "?"
        render.console.print(
            f"[yellow]the job finished ({job.status} at {finished}) but its root span is not in "
            f"{settings.telemetry_dir}: {len(drawn)} spans drawn from the store (marked reconstructed)[/]"
        )
    print_trace(found, job=job, job_id=wanted, telemetry_dir=settings.telemetry_dir)
    return 0


def _from_store(found: list[Span], job: Job | None, history: list[LifecycleEntry]) -> list[Span]:
    """A finished job whose root span is missing from the files: the spans the store
    describes (orchestrator.tracing.spans_from_store) that the files lack."""
    if job is None or not job.status.terminal or not job.trace.sampled or any(s.name == SpanName.JOB for s in found):
        return []
    have = {s.span_id for s in found}
    return [_span(r) for r in spans_from_store(job, history) if r.span_id not in have]


def _span(record: SpanRecord) -> Span:
    events = [Event(e.name, e.time_ns, dict(e.attributes)) for e in record.events]
    return Span(
        trace_id=record.trace_id,
        span_id=record.span_id,
        parent_id=record.parent_id,
        name=record.name,
        start_ns=record.start_ns,
        end_ns=record.end_ns,
        attributes=dict(record.attributes),
        events=events,
        status_code=record.status_code,
        status_message=record.status_message,
    )


async def _find(store: JobStore | None, wanted: str) -> Job | None:
    if store is None:
        return None
    try:
        return await resolve_job(store, wanted)
    except JobNotFound:
        return None


def _no_spans(job: Job | None, wanted: str, settings: Settings) -> str:
    where = settings.telemetry_dir
    if job is None:
        return (
            f"no job {wanted!r} in {store_description(settings)} and no spans of it in {where} "
            "(another --data-dir or ORCHESTRATOR_DATABASE_URL?)"
        )
    if not job.trace.sampled:
        return f"job {job.id} was not sampled (OTEL_TRACES_SAMPLER): it has no trace"
    return (
        f"job {job.id} is {job.status}, but no span of its trace {job.trace.trace_id} is in {where}: its spans "
        "were written by the processes that handled it (on another host, or exported over OTLP: look the trace "
        "id up in the tracing backend)"
    )


def print_trace(
    spans: list[Span], *, job: Job | None = None, job_id: str = "", telemetry_dir: Path | None = None
) -> None:
    roots = [s for s in spans if s.name == SpanName.JOB]
    trace_id = job.trace.trace_id if job else (roots[0].trace_id if roots else spans[0].trace_id)
    shown_id = job.id if job else (roots[0].attributes.get(Attr.JOB_ID, job_id) if roots else job_id)
    render.console.print(f"[bold]trace {trace_id}[/]  job {escape(str(shown_id))}")
    if not roots:
        render.console.print(f"[yellow]{escape(_missing_root(job, telemetry_dir))}[/]")
    for line in render_waterfall(spans):
        render.console.print(line, crop=False, overflow="ignore")


def _missing_root(job: Job | None, telemetry_dir: Path | None) -> str:
    """Why the root span is absent, truthfully: the store knows whether the job finished."""
    if job is None:
        return "no root span: the job is unknown to this store and has not finished here"
    if not job.status.terminal:
        return f"the job is {job.status}: its root span is written when it finishes"
    finished = render.timestamp(job.finished_ns) if job.finished_ns else "?"
    return (
        f"the job finished ({job.status} at {finished}) but its root span is not in {telemetry_dir} yet: "
        "the process that finished it exports spans in batches (OTEL_BSP_SCHEDULE_DELAY, 5 s by default), "
        "or it ran on another host"
    )


# -- report -------------------------------------------------------------------------------


async def report_command(ctx: Context) -> int:
    args, settings = ctx.args, ctx.settings
    since = report.parse_since(args.since, now_ns()) if args.since else None
    if args.source == "files":
        spans = await anyio.to_thread.run_sync(lambda: list(load_spans(settings.telemetry_dir)))
        records = report.records_from_spans(spans)
        where = f"the telemetry files in {settings.telemetry_dir} (sampled jobs that finished on this host)"
    else:
        async with open_store(settings) as store:
            if store is None:
                raise InvalidRequest(
                    f"no database at {settings.database_path} (another --data-dir or ORCHESTRATOR_DATABASE_URL?); "
                    "report --from files reads the telemetry files instead"
                )
            records = await _store_records(store, since_ns=since, project_id=args.project_id)
        where = store_description(settings)
    selected = report.select(records, since_ns=since, project_id=args.project_id)
    answers = report.build_report(selected, source=args.source, where=where)
    answers["filters"] = {
        "since": render.timestamp(since) if since is not None else None,
        "project_id": args.project_id,
    }
    if args.json:
        print_json(answers)
    else:
        report.print_report(answers)
    return 0


async def _store_records(store: JobStore, *, since_ns: int | None, project_id: str | None) -> list[report.JobRecord]:
    """Every finished job of the store (of the project, finished in the window) with its
    history: one query per page of jobs and one for the page's histories."""
    records = []
    for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        after: str | None = None
        while True:
            page = await store.list_jobs(status=status, project_id=project_id, limit=_PAGE, after=after)
            # --since is about when jobs finished: the store's since_ns filter (creation) would
            # drop a long job created before the window that finished inside it.
            wanted = [job for job in page if since_ns is None or (job.finished_ns or 0) >= since_ns]
            histories = await store.history_many([job.id for job in wanted]) if wanted else {}
            records += [report.record_from_job(job, histories.get(job.id, [])) for job in wanted]
            if len(page) < _PAGE:
                break
            after = page[-1].id
    return records


_PAGE = 500


def add_report_arguments(p: Any) -> None:
    p.add_argument(
        "--from",
        dest="source",
        choices=["store", "files"],
        default="store",
        help="store: every finished job of the store, from any host (default); files: this host's telemetry files",
    )
    p.add_argument("--since", help="only jobs finished since: a duration back (30m, 6h, 2d) or an ISO time")
    p.add_argument("--project-id", help="only this project's jobs")
    p.add_argument("--json", action="store_true", help="print JSON (with every job id of each category)")


async def demo_epilogue(ctx: Context) -> None:
    spans = await anyio.to_thread.run_sync(lambda: list(load_spans(ctx.settings.telemetry_dir)))
    failed = [s for s in spans if s.name == SpanName.JOB and s.attributes.get(Attr.STATUS) == "failed"]
    if failed:
        render.console.rule("trace of the failed job")
        job_id = str(failed[-1].attributes.get(Attr.JOB_ID))
        print_trace(job_trace(spans, job_id), job_id=job_id)
        render.console.print(f"[dim](orchestrator trace {job_id})[/]")
    render.console.rule("report, from the telemetry files")
    records = report.select(report.records_from_spans(spans), since_ns=None, project_id=None)
    report.print_report(report.build_report(records, source="files"))
    render.console.print("[dim](orchestrator report --from files; orchestrator report reads the store)[/]")
