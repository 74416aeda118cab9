"""``orchestrator demo``: the whole product on the embedded default, in under a minute.

It works in a directory of its own (``./.orchestrator-demo`` unless ``demo --dir``
says otherwise) with the embedded SQLite database, whatever ``--data-dir``,
``ORCHESTRATOR_DATA_DIR`` or ``ORCHESTRATOR_DATABASE_URL`` name: starting afresh
there can never delete a user's jobs. A marker file tells a demo directory apart;
any other non-empty directory is refused.

It writes four sample projects into that directory (a clean one, one whose
``package.json`` is malformed so the dependencies module fails, a large one that
makes the secrets scan overrun its expected runtime, and one that is cancelled
while it runs), submits a job for each, runs a worker in-process until all are
terminal while showing progress, then prints a per-job summary, the trace of the
failed job and the report that answers the four operational questions.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator.cli import render
from orchestrator.cli.main import Context, with_app
from orchestrator.domain import InvalidRequest, Job
from orchestrator.modules.builtin import BUILTIN_MODULES

if TYPE_CHECKING:
    from orchestrator.bootstrap import App
    from orchestrator.usecases.execute import JobControl, JobExecutor
    from orchestrator.workflow import JobWorkflow

__all__ = ["MARKER", "demo", "write_sample_projects"]

#: The file that marks a directory as the demo's own (safe to start afresh).
MARKER = ".orchestrator-demo"
BUILTIN_NAMES = sorted(module.name for module in BUILTIN_MODULES)
CANCEL_REASON = "cancelled by the demo while running"


@dataclass(frozen=True)
class Sample:
    project_id: str
    path: Path
    cancel_while_running: bool = False
    #: Per-job module budgets (the create request's ``options.module_budgets``).
    budgets: dict[str, dict[str, float]] | None = None


#: The large sample expects each module to take a millisecond, so that the overruns show on
#: any machine (a fast one scans 160 files in a few milliseconds). Every module: the
#: modules share one pass over the files, so each is expected to take as long as the
#: slowest expectation among them (orchestrator.modules.budget: JobBudgets.finish).
TIGHT = {name: {"expected_s": 0.001} for name in BUILTIN_NAMES}


def write_sample_projects(root: Path, *, large_files: int = 160) -> list[Sample]:
    """The demo's projects (deterministic content)."""
    rng = random.Random(7)
    clean = root / "clean-service"
    _write(clean / "pyproject.toml", '[project]\nname = "clean"\ndependencies = ["httpx>=0.27", "pydantic>=2"]\n')
    _write(clean / "requirements-dev.txt", "pytest>=8\nruff==0.8.0\n# comment\n")
    _write(
        clean / "src/clean/__init__.py",
        '"""A tidy package."""\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n',
    )
    _write(clean / "src/clean/util.py", "# TODO: cache this\ndef double(x: int) -> int:\n    return 2 * x\n")
    _write(clean / "README.md", "# clean\n\nA small, healthy project.\n")

    broken = root / "broken-manifest"
    _write(broken / "package.json", '{\n  "name": "broken",\n  "dependencies": {\n    "left-pad": "^1.3.0",\n')
    _write(broken / "index.js", "// FIXME: handle errors\nmodule.exports = () => 42;\n")
    _write(broken / "tools/build.py", "def build(:\n    pass\n")  # a syntax error: a finding

    large = root / "large-monorepo"
    _write_large(large, rng, files=large_files)
    to_cancel = root / "nightly-batch"
    _write_large(to_cancel, rng, files=large_files)
    return [
        Sample("clean-service", clean),
        Sample("broken-manifest", broken),
        Sample("large-monorepo", large, budgets=TIGHT),
        Sample("nightly-batch", to_cancel, cancel_while_running=True),
    ]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_large(root: Path, rng: random.Random, *, files: int) -> None:
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "service",
        "handler",
        "request",
        "response",
        "cache",
        "queue",
        "token",
        "value",
    ]
    _write(root / "pyproject.toml", '[project]\nname = "mono"\ndependencies = ["fastapi", "sqlalchemy>=2"]\n')
    for index in range(files):
        lines = []
        for line_no in range(1500):
            words_line = " ".join(rng.choice(words) for _ in range(10))
            if line_no % 97 == 0:
                lines.append(f"// TODO: {words_line}")
            elif line_no % 503 == 0:
                lines.append(f'const apiKey = "sk_{rng.getrandbits(64):016x}{rng.getrandbits(32):08x}";')
            else:
                lines.append(f"const v{line_no} = '{words_line}';")
        _write(root / f"packages/pkg{index // 20}/src/file{index}.js", "\n".join(lines) + "\n")
    _write(
        root / "scripts/deploy.py",
        textwrap.dedent("""\
        import os
        # FIXME: read from the vault
        PASSWORD = "hunter2-not-a-real-password"
        def deploy() -> None:
            print(os.environ.get("TARGET"))
        """),
    )


async def demo(ctx: Context) -> int:
    data_dir = ctx.settings.data_dir
    _claim(data_dir, keep=ctx.args.keep)
    render.console.print(f"[bold]orchestrator demo[/] - in its own directory {escape(str(data_dir.resolve()))}")
    for note in _ignored(ctx):
        render.console.print(f"[dim]{escape(note)}[/]")
    started = time.monotonic()
    samples = await anyio.to_thread.run_sync(write_sample_projects, data_dir / "demo-projects")

    async def go(app: App) -> int:
        jobs: list[Job] = []
        for sample in samples:
            jobs.append(
                await app.create.execute(
                    # The built-in modules only: a plugin installed here must not change the demo.
                    {
                        "project_id": sample.project_id,
                        "source": str(sample.path),
                        "modules": BUILTIN_NAMES,
                        "options": {"module_budgets": sample.budgets or {}},
                    }
                )
            )
        cancel_ids = frozenset(j.id for j, s in zip(jobs, samples, strict=True) if s.cancel_while_running)
        worker = app.worker(concurrency=2, executor=_CancelledOnceRunning(app.execute, app.workflow, cancel_ids))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            jobs = await _watch(app, jobs, stopped=lambda: worker.stopping)
            worker.stop()
        render.console.print()
        for job in jobs:
            render.job_panel(job)
            render.console.print()
        render.console.print(f"[dim]{len(jobs)} jobs in {time.monotonic() - started:.1f} s[/]")
        if ctx.telemetry.mode == "files":
            render.console.print(
                f"[dim]spans, logs and metrics: {ctx.settings.telemetry_dir}/*.jsonl (OTLP/JSON); "
                "logs on stderr too with --log-level info[/]"
            )
        return 0

    def explore() -> None:
        where = _shell_path(data_dir)
        render.console.print(
            f"[dim]look around: orchestrator --data-dir {where} jobs | status ID | events ID | trace ID | report[/]"
        )

    code = await with_app(ctx, go)
    if ctx.telemetry.mode == "files":
        ctx.telemetry.flush()  # the epilogue reads the files; OTLP is flushed once, at shutdown
    await _show_telemetry(ctx)
    explore()
    return code


async def _watch(app: App, jobs: list[Job], *, stopped: Callable[[], bool]) -> list[Job]:
    """Show progress until every job is terminal, or the worker ``stopped`` by itself."""
    with Live(_progress(jobs), console=render.console, refresh_per_second=8, transient=False) as live:
        while True:
            jobs = [await app.store.get(j.id) for j in jobs]
            live.update(_progress(jobs))
            if all(j.status.terminal for j in jobs) or stopped():
                return jobs
            await anyio.sleep(0.1)


@dataclass(frozen=True)
class _CancelledOnceRunning:
    """Runs jobs as ``executor`` does, and asks for the cancellation of those in
    ``job_ids`` as they start running, the way ``orchestrator cancel`` would: flagged
    while Running, such a job can only end Cancelled, however fast its modules are (a
    progress poll that waited to see it running could find it finished instead)."""

    executor: JobExecutor
    workflow: JobWorkflow
    job_ids: frozenset[str]

    async def execute(self, job: Job, *, control: JobControl | None = None, worker_id: str | None = None) -> Job:
        if job.id in self.job_ids:
            await self.workflow.cancel(job.id, reason=CANCEL_REASON, requested_by="demo")
        return await self.executor.execute(job, control=control, worker_id=worker_id)


def _progress(jobs: list[Job]) -> Table:
    table = Table(title="jobs", box=None, header_style="dim", title_justify="left")
    for column in ("project", "status", "attempt", "job id"):
        table.add_column(column)
    for job in jobs:
        table.add_row(job.project_id, render.status_text(job.status), str(job.attempt), job.id)
    return table


async def _show_telemetry(ctx: Context) -> None:
    from orchestrator.cli import views

    if ctx.telemetry.mode != "files":
        render.console.print(
            f"[dim]telemetry exported over OTLP ({ctx.telemetry.mode}); "
            "`orchestrator trace` and `report` read the embedded files only[/]"
        )
        return
    await views.demo_epilogue(ctx)


def _claim(data_dir: Path, *, keep: bool) -> None:
    """Make ``data_dir`` the demo's: create it with the marker, or start it afresh when
    it already is one. A directory holding anything else is refused, never emptied."""
    marker = data_dir / MARKER
    if data_dir.exists():
        if not data_dir.is_dir():
            raise InvalidRequest(f"demo --dir {data_dir}: exists and is not a directory")
        if not marker.is_file() and any(data_dir.iterdir()):
            raise InvalidRequest(
                f"demo --dir {data_dir}: not empty and not a demo directory (no {MARKER} file in it); "
                "the demo only writes into a new, empty or earlier demo directory: pass another --dir"
            )
        if marker.is_file() and not keep:
            shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "Written by `orchestrator demo`, which empties this directory when it starts again.\n", encoding="utf-8"
    )


def _ignored(ctx: Context) -> list[str]:
    """What the demo leaves alone, said once so nobody wonders where their jobs went."""
    notes = []
    if ctx.args.data_dir is not None or os.environ.get("ORCHESTRATOR_DATA_DIR"):
        notes.append("--data-dir / ORCHESTRATOR_DATA_DIR are not used by the demo (demo --dir chooses its directory)")
    if os.environ.get("ORCHESTRATOR_DATABASE_URL"):
        notes.append("ORCHESTRATOR_DATABASE_URL is set: the demo ignores it and uses its own SQLite database")
    return notes


def _shell_path(path: Path) -> str:
    text = str(path)
    return shlex.quote(text)
