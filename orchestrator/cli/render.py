"""Terminal rendering of jobs, module results and lifecycle histories (rich)."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.domain import Job, JobStatus, LifecycleEntry, ModuleOutcome
from orchestrator.serialization import entry_json, job_json, timestamp  # re-exported: the JSON form lives there

__all__ = [
    "Column",
    "console",
    "entry_json",
    "err_console",
    "events_rows",
    "job_json",
    "job_panel",
    "jobs_rows",
    "print_table",
    "status_text",
    "timestamp",
]


class _Console(Console):
    """A reader that goes away (``| head``). rich's own answer is ``SystemExit(1)``, the
    status of a failed job, raised wherever the write was: on stderr that abandoned a job
    ``run`` was running (left Running for a worker to run again)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to this reader
        if not self.stderr:
            # The result's reader left: the command ends quietly, status 141 (see main).
            raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")
        # Notes on stderr are not the result: the command carries on without them.


# soft_wrap: a long line (an id, a path, a reason) is never broken at 80 columns when
# the output is a pipe or a file; tables lay themselves out (see print_table).
console = _Console(highlight=False, soft_wrap=True)
err_console = _Console(stderr=True, highlight=False, soft_wrap=True)

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
    return "-" if ns is None else timestamp(ns)


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
            _visible(r.module),
            Text(str(r.outcome), style=_OUTCOME_STYLE[r.outcome]),
            duration,
            f"{r.expected_ms:,.0f} ms",
            Text(_visible(detail), overflow="ellipsis", no_wrap=True),
        )
    return table


def _scalars(summary: Any) -> Sequence[tuple[str, Any]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def job_panel(job: Job) -> None:
    """A job's summary: status, reason, per-module outcomes."""
    head = Text.assemble(
        (_visible(job.project_id), "bold"),
        "  ",
        status_text(job.status),
        f"  {job.id}",
    )
    console.print(head)
    if job.reason:
        style = "red" if job.status is JobStatus.FAILED else ""
        console.print(Text(f"  reason: {_visible(job.reason)}", style=style))
    if job.error_category:
        console.print(f"  error: {job.error_category} (phase {job.error_phase})")
    if job.cancel_requested and not job.status.terminal:
        by = f" by {job.cancel_requested_by}" if job.cancel_requested_by else ""
        console.print(Text(_visible(f"  cancel requested{by}: {job.cancel_requested}"), style="yellow"))
    if job.damaged:
        console.print(Text(f"  damaged: {job.damaged} could not be read back; the rest is as stored", style="yellow"))
    console.print(Text(_visible(f"  trace: {job.trace.trace_id}  attempt: {job.attempt}")))
    if job.results:
        console.print(modules_table(job), style="", crop=False)


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    #: Ids and timestamps: never cut on a terminal (people copy them).
    whole: bool = False


Cell = str | Text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[Cell]]) -> None:
    """A table on stdout: laid out by rich on a terminal; plain, aligned, whole values
    (no width limit, no ellipsis, no colour) when piped, so ``awk``/``cut`` get full ids."""
    listed = [list(row) for row in rows]
    if console.is_terminal:
        console.print(_rich_table(columns, listed))
        return
    cells = [[c.header for c in columns], *([_plain(cell) for cell in row] for row in listed)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = console.file
    for row in cells:
        padded = [
            value.rjust(width) if column.justify == "right" else value.ljust(width)
            for value, width, column in zip(row, widths, columns, strict=True)
        ]
        out.write("  ".join(padded).rstrip() + "\n")


def _plain(cell: Cell) -> str:
    return _visible(cell.plain if isinstance(cell, Text) else str(cell))


def _visible(text: str) -> str:
    """Control characters written out (``\\n``, ``\\x1b``): a module's error or a reason
    holding a newline or a terminal escape (a colour, a window title, a hyperlink) is
    shown as text, on its line, and never drives the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _rich_table(columns: Sequence[Column], rows: list[list[Cell]]) -> Table:
    table = Table(box=None, header_style="dim")
    for i, column in enumerate(columns):
        if column.whole:
            longest = max([len(column.header), *(len(_plain(row[i])) for row in rows)])
            table.add_column(column.header, justify=column.justify, no_wrap=True, min_width=longest)
        else:
            table.add_column(column.header, justify=column.justify, overflow="ellipsis", no_wrap=True)
    for row in rows:
        # Text, not str: a reason or path holding "[...]" is shown as is, not read as markup.
        table.add_row(*(cell if isinstance(cell, Text) else Text(_visible(cell)) for cell in row))
    return table


JOB_COLUMNS = (
    Column("id", whole=True),
    Column("project"),
    Column("status"),
    Column("attempt", "right"),
    Column("created", whole=True),
    Column("category"),
    Column("reason"),
)


def jobs_rows(jobs: Sequence[Job]) -> list[list[Cell]]:
    return [
        [
            job.id,
            job.project_id,
            status_text(job.status),
            str(job.attempt),
            _ts(job.created_ns),
            str(job.error_category or ""),
            f"[damaged: {job.damaged}] {job.reason or ''}" if job.damaged else job.reason or "",
        ]
        for job in jobs
    ]


EVENT_COLUMNS = (
    Column("#", "right"),
    Column("at", whole=True),
    Column("from"),
    Column("to"),
    Column("time in from", "right"),
    Column("attempt", "right"),
    Column("worker"),
    Column("reason"),
)


def events_rows(entries: Sequence[LifecycleEntry]) -> list[list[Cell]]:
    return [
        [
            str(e.seq),
            _ts(e.at_ns),
            str(e.status_from or "-"),
            status_text(e.status_to),
            f"{e.duration_ms:,.1f} ms",
            str(e.attempt),
            e.worker_id or "",
            e.reason,
        ]
        for e in entries
    ]
