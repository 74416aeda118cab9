"""What the CLI draws on a terminal from stored text it does not control: a module's
error, a summary's values, a reason. A newline or a terminal escape in them is written
out as text; it never moves the cursor, sets the window title or colours the screen."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from orchestrator.cli import render
from orchestrator.domain import ErrorCategory, Job, JobOptions, JobStatus, ModuleOutcome, ModuleResult, TraceContext

#: Sequences rich never writes itself: a window title (OSC), blink + reverse, a bell, C1 CSI.
HOSTILE = "first line\nsecond \x1b[5;7mBLINK \x1b]0;pwned\x07 \x9b2J end"
SHOWN = "first line\\nsecond \\x1b[5;7mBLINK \\x1b]0;pwned\\x07 \\x9b2J end"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    screen = io.StringIO()
    drawn_on = Console(file=screen, force_terminal=True, width=400, color_system="truecolor")
    monkeypatch.setattr(render, "console", drawn_on)
    return screen


def hostile_job() -> Job:
    job = Job.new(project_id="p", source="/s", modules=("m",), options=JobOptions(), trace=TraceContext.new())
    result = ModuleResult(
        module="m",
        version="1",
        outcome=ModuleOutcome.ERROR,
        started_ns=job.created_ns,
        duration_ms=5.0,
        expected_ms=1000.0,
        timeout_ms=5000.0,
        attempt=1,
        summary={},
        error=HOSTILE,
        error_type="ModuleError",
    )
    return dataclasses.replace(
        job,
        status=JobStatus.FAILED,
        reason=f"1 of 1 modules failed: {HOSTILE}",
        error_category=ErrorCategory.MODULE,
        results=(result,),
    )


def _assert_inert(drawn: str) -> None:
    for raw in ("\x1b[5;7m", "\x1b]0;", "\x07", "\x9b", "first line\n"):
        assert raw not in drawn
    assert SHOWN in drawn


def test_a_job_panel_shows_control_characters_as_text(terminal: io.StringIO) -> None:
    render.job_panel(hostile_job())
    drawn = terminal.getvalue()
    _assert_inert(drawn)
    assert drawn.count(SHOWN) == 2  # the reason and the module's error, each on its line
    assert sum("reason:" in line for line in drawn.splitlines()) == 1


def test_a_table_on_a_terminal_shows_control_characters_as_text(terminal: io.StringIO) -> None:
    render.print_table(render.JOB_COLUMNS, render.jobs_rows([hostile_job()]))
    drawn = terminal.getvalue()
    for raw in ("\x1b]0;", "\x07", "\x1b[5;7m"):
        assert raw not in drawn
    assert len(drawn.strip().splitlines()) == 2  # the header and the job's one row
