"""The CLI's job commands: run, submit, worker, status, jobs, events, cancel, modules."""

from __future__ import annotations

import getpass
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from orchestrator.bootstrap import open_app
from orchestrator.cli import render
from orchestrator.cli.ids import resolve_job
from orchestrator.cli.inputs import request_from_args
from orchestrator.cli.main import Context, print_json, with_app
from orchestrator.cli.render import Column
from orchestrator.cli.report import parse_since
from orchestrator.cli.run import create_job
from orchestrator.domain import (
    ErrorCategory,
    IllegalTransition,
    Job,
    JobStatus,
    OrchestratorError,
    TransitionConflict,
    now_ns,
)
from orchestrator.job_queue import Worker
from orchestrator.job_queue.watchdog import ExitWatchdog, exit_at_once, shutdown_exit_seconds
from orchestrator.job_queue.worker import EXIT_RECYCLE
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.serialization import entry_json, job_json, timestamp

if TYPE_CHECKING:
    from orchestrator.bootstrap import App

__all__ = [
    "add_db_commands",
    "add_telemetry_commands",
    "cancel",
    "events",
    "jobs",
    "modules",
    "status",
    "submit",
    "worker",
]

log = logging.getLogger(__name__)


async def submit(ctx: Context) -> int:
    request_from_args(ctx.args)

    async def go(app: App) -> int:
        job = await create_job(app, ctx)
        if ctx.args.json:
            print_json(job_json(job))
        else:
            print(job.id)
        return 0

    return await with_app(ctx, go)


async def worker(ctx: Context) -> int:
    async def go(app: App) -> int:
        w: Worker = app.worker()
        render.err_console.print(
            f"worker {w.worker_id} on {app.store.backend}, concurrency {w.config.concurrency}; "
            "Ctrl-C or SIGTERM to stop",
            style="dim",
        )
        seconds = shutdown_exit_seconds(w.config.shutdown_grace_seconds, app.settings.module_abandon_seconds)
        watchdog = ExitWatchdog(seconds, flush=ctx.telemetry.flush)
        async with anyio.create_task_group() as tg:
            # Started (its handler installed) before the worker announces itself: a SIGTERM
            # from then on is a graceful stop, never an interrupted start-up.
            await tg.start(_stop_on_signal, w, watchdog)
            if app.settings.webhooks:
                tg.start_soon(app.dispatcher().run)
            await w.run()
            tg.cancel_scope.cancel()
        if w.recycled:
            render.err_console.print(
                f"worker {w.worker_id} stopped: too many modules it abandoned still run "
                f"(ORCHESTRATOR_MAX_ABANDONED_MODULES={w.config.max_abandoned_modules}); exit {EXIT_RECYCLE}, "
                "for its supervisor to start a fresh process",
                style="red",
            )
            return EXIT_RECYCLE
        return 0

    return await with_app(ctx, go)


async def _stop_on_signal(
    w: Worker, watchdog: ExitWatchdog, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    # The receiver stays open after the first signal: a second one exits at once. (Closed,
    # Python's own handler came back, and the second Ctrl-C raised KeyboardInterrupt in
    # whatever module code ran: recorded as that module's panic.)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if w.stopping:
                exit_at_once(f"{signal.Signals(signum).name} again")
            render.err_console.print(
                f"{signal.Signals(signum).name}: finishing running jobs "
                f"(up to {w.config.shutdown_grace_seconds:g} s), then requeueing the rest "
                "(again to exit at once)",
                style="yellow",
            )
            w.stop()
            watchdog.arm()  # whatever a module does, the worker stops within the grace (and a margin)


async def status(ctx: Context) -> int:
    async def go(app: App) -> int:
        job = await resolve_job(app.store, ctx.args.job_id)
        if ctx.args.json:
            print_json(job_json(job))
        else:
            render.job_panel(job)
        return 0

    return await with_app(ctx, go, modules=False)


async def jobs(ctx: Context) -> int:
    limit = max(1, min(ctx.args.limit, 1000))
    status = JobStatus(ctx.args.status) if ctx.args.status else None
    category = ErrorCategory(ctx.args.error_category) if ctx.args.error_category else None
    since = parse_since(ctx.args.since, now_ns()) if ctx.args.since else None

    async def go(app: App) -> int:
        found = await app.store.list_jobs(
            status=status, project_id=ctx.args.project_id, error_category=category, since_ns=since, limit=limit
        )
        if ctx.args.json:
            print_json([job_json(j) for j in found])
        else:
            render.print_table(render.JOB_COLUMNS, render.jobs_rows(found))
        return 0

    return await with_app(ctx, go, modules=False)


async def events(ctx: Context) -> int:
    async def go(app: App) -> int:
        job = await resolve_job(app.store, ctx.args.job_id)
        entries = await app.store.history(job.id)
        if ctx.args.json:
            print_json([entry_json(e) for e in entries])
        else:
            render.print_table(render.EVENT_COLUMNS, render.events_rows(entries))
        return 0

    return await with_app(ctx, go, modules=False)


class NothingToCancel(OrchestratorError):
    """The job has already finished."""

    category = ErrorCategory.TRANSITION


async def cancel(ctx: Context) -> int:
    async def go(app: App) -> int:
        job = await resolve_job(app.store, ctx.args.job_id)
        if job.status.terminal:
            raise _finished(job)
        try:
            job = await app.workflow.cancel(job.id, reason=ctx.args.reason, requested_by=requester())
        except IllegalTransition:
            job = await app.store.get(job.id)
            if job.status.terminal:
                raise _finished(job) from None
            raise
        if job.status is not JobStatus.RUNNING:
            print(f"job {job.id} {job.status}")
            return 0
        print(await _cancel_running(app, job))
        return 0

    return await with_app(ctx, go, modules=False)


def requester() -> str:
    """Who asks, as recorded in the job's history: ``cli:user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def _finished(job: Job) -> NothingToCancel:
    at = f" at {timestamp(job.finished_ns)}" if job.finished_ns else ""
    return NothingToCancel(f"job {job.id} already {job.status}{at}: nothing to cancel", job_id=job.id)


async def _cancel_running(app: App, job: Job) -> str:
    """A Running job was flagged for cancellation: say what will really happen, which
    depends on whether a live worker holds its lease."""
    expires = job.lease_expires_ns or 0
    owner = job.lease_owner or "an unknown worker"
    if expires > now_ns():
        return (
            f"cancellation of running job {job.id} requested: worker {owner} holds its lease and stops it within "
            f"about {app.settings.cancel_poll_seconds:g} s; if that worker is gone, the job is cancelled when its "
            f"lease expires at {timestamp(expires)} (by any worker's reaper, or `orchestrator cancel {job.id}` "
            "again)"
        )
    # No worker renewed the lease: nobody is running the job, so cancel it here.
    try:
        done = await app.workflow.recover(job, max_attempts=app.settings.max_attempts)
    except TransitionConflict:
        done = await app.store.get(job.id)
        return f"job {job.id} is {done.status} (another process moved it meanwhile)"
    since = f" since {timestamp(expires)}" if expires else ""
    return f"job {job.id} {done.status}: no worker was running it (the lease of {owner} had expired{since})"


async def modules(ctx: Context) -> int:
    # The registry alone, the one the worker builds: listing modules opens no store (none is
    # created in the folder it runs in, and a database that is down does not matter).
    registry = ModuleRegistry.default(entry_points=ctx.settings.load_entry_points)
    rows: list[dict[str, Any]] = [
        {
            "name": m.name,
            "version": m.version,
            "expected_runtime_s": m.expected_runtime,
            "timeout_s": m.timeout,
            "description": m.description,
        }
        for m in registry
    ]
    if ctx.args.json:
        print_json(rows)
        return 0
    render.print_table(
        (
            Column("module"),
            Column("version"),
            Column("expected", "right"),
            Column("timeout", "right"),
            Column("description"),
        ),
        (
            [r["name"], r["version"], f"{r['expected_runtime_s']:g} s", f"{r['timeout_s']:g} s", r["description"]]
            for r in rows
        ),
    )
    return 0


async def db_upgrade(ctx: Context) -> int:
    """Apply pending schema migrations (the worker does this on start by default)."""
    ctx.settings.auto_migrate = True
    async with open_app(ctx.settings) as app:
        print(f"{app.store.backend} schema is at version {app.store.schema_version}")
    return 0


def add_db_commands(sub: Any) -> None:
    p = sub.add_parser("db", help="database maintenance")
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db.add_parser("upgrade", help="apply pending schema migrations")
    up.set_defaults(handler=db_upgrade, log_level_default="info", telemetry=False)


def add_telemetry_commands(sub: Any) -> None:
    """``trace`` and ``report``: what a tracing backend would show, without one."""
    from orchestrator.cli import views

    p = sub.add_parser("trace", help="a job's trace as a waterfall (the job from the store, spans from the files)")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=views.trace_command, log_level_default="error", telemetry=False)

    p = sub.add_parser("report", help="answer the four operational questions (from the store by default)")
    views.add_report_arguments(p)
    p.set_defaults(handler=views.report_command, log_level_default="error", telemetry=False)
