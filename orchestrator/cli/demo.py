"""``orchestrator demo``: the whole product on the embedded default, in under a minute.

It writes four sample projects into the data directory (a clean one, one whose
``package.json`` is malformed so the dependencies module fails, a large one that
makes the secrets scan overrun its expected runtime, and one that is cancelled
while it runs), submits a job for each, runs a worker in-process until all are
terminal while showing progress, then prints a per-job summary, the trace of the
failed job and the report that answers the four operational questions.
"""

from __future__ import annotations

import random
import shutil
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from rich.live import Live
from rich.table import Table

from orchestrator.cli import render
from orchestrator.cli.main import Context, with_app
from orchestrator.domain import Job, JobStatus

if TYPE_CHECKING:
    from orchestrator.bootstrap import App

__all__ = ["demo", "write_sample_projects"]


@dataclass(frozen=True)
class Sample:
    project_id: str
    path: Path
    cancel_while_running: bool = False


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
        Sample("large-monorepo", large),
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
    if not ctx.args.keep:
        _reset(data_dir)
    render.console.print(f"[bold]orchestrator demo[/] - data in {data_dir.resolve()}")
    started = time.monotonic()
    samples = await anyio.to_thread.run_sync(write_sample_projects, data_dir / "demo-projects")

    async def go(app: App) -> int:
        jobs: list[Job] = []
        for sample in samples:
            jobs.append(await app.create.execute({"project_id": sample.project_id, "source": str(sample.path)}))
        cancel_ids = {j.id for j, s in zip(jobs, samples, strict=True) if s.cancel_while_running}
        worker = app.worker(concurrency=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            jobs = await _watch(app, jobs, cancel_ids)
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

    code = await with_app(ctx, go)
    if ctx.telemetry.mode == "files":
        ctx.telemetry.flush()  # the epilogue reads the files; OTLP is flushed once, at shutdown
    await _show_telemetry(ctx)
    return code


async def _watch(app: App, jobs: list[Job], cancel_ids: set[str]) -> list[Job]:
    """Show progress until every job is terminal; cancel the chosen job once it runs."""
    cancelled: set[str] = set()
    with Live(_progress(jobs), console=render.console, refresh_per_second=8, transient=False) as live:
        while True:
            jobs = [await app.store.get(j.id) for j in jobs]
            for job in jobs:
                running_for = (time.time_ns() - (job.started_ns or time.time_ns())) / 1e9
                if (
                    job.id in cancel_ids
                    and job.status is JobStatus.RUNNING
                    and job.id not in cancelled
                    and running_for > 0.3
                ):
                    await app.workflow.cancel(job.id, reason="cancelled by the demo while running")
                    cancelled.add(job.id)
            live.update(_progress(jobs))
            if all(j.status.terminal for j in jobs):
                return jobs
            await anyio.sleep(0.1)


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


def _reset(data_dir: Path) -> None:
    """Start afresh: the demo's database, telemetry files and sample projects only."""
    for name in ("orchestrator.db", "orchestrator.db-wal", "orchestrator.db-shm"):
        (data_dir / name).unlink(missing_ok=True)
    for folder in ("telemetry", "demo-projects"):
        shutil.rmtree(data_dir / folder, ignore_errors=True)
