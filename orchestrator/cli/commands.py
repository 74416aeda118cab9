"""The CLI's job commands: run, submit, worker, status, jobs, events, cancel, modules."""

from __future__ import annotations

import logging
import os
import secrets
import signal
from typing import TYPE_CHECKING, Any

import anyio
from rich.table import Table

from orchestrator.bootstrap import open_app
from orchestrator.cli import render
from orchestrator.cli.main import Context, exit_code, print_json, request_from_args, with_app
from orchestrator.domain import InvalidRequest, JobStatus, now_ns
from orchestrator.job_queue import Worker
from orchestrator.usecases.create import validate_project_id
from orchestrator.webhooks.dispatcher import check_url
from orchestrator.webhooks.models import SUBSCRIBABLE_EVENTS, Subscription
from orchestrator.webhooks.store import webhook_store

if TYPE_CHECKING:
    from orchestrator.bootstrap import App

__all__ = ["add_telemetry_commands", "cancel", "events", "jobs", "modules", "run", "status", "submit", "worker"]

log = logging.getLogger(__name__)


async def run(ctx: Context) -> int:
    request = request_from_args(ctx.args)

    async def go(app: App) -> int:
        job = await app.create.execute(request)
        if not ctx.args.json:
            render.err_console.print(f"job {job.id} queued (trace {job.trace.trace_id})", style="dim")
        worker = app.worker(concurrency=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: worker.run(claim=False))
            await worker.adopt(job)
            while (job := await app.store.get(job.id)).status is JobStatus.RUNNING:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            worker.stop()
        if ctx.args.json:
            print_json(render.job_json(job))
        else:
            render.job_panel(job)
        return exit_code(job)

    return await with_app(ctx, go)


async def submit(ctx: Context) -> int:
    request = request_from_args(ctx.args)

    async def go(app: App) -> int:
        job = await app.create.execute(request)
        if ctx.args.json:
            print_json(render.job_json(job))
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
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, w)
            if app.settings.webhooks:
                tg.start_soon(app.dispatcher().run)
            await w.run()
            tg.cancel_scope.cancel()
        return 0

    return await with_app(ctx, go)


async def _stop_on_signal(w: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            render.err_console.print(
                f"{signal.Signals(signum).name}: finishing running jobs "
                f"(up to {w.config.shutdown_grace_seconds:g} s), then requeueing the rest",
                style="yellow",
            )
            w.stop()
            return


async def status(ctx: Context) -> int:
    async def go(app: App) -> int:
        job = await app.store.get(ctx.args.job_id)
        if ctx.args.json:
            print_json(render.job_json(job))
        else:
            render.job_panel(job)
        return 0

    return await with_app(ctx, go)


async def jobs(ctx: Context) -> int:
    async def go(app: App) -> int:
        found = await app.store.list_jobs(
            status=JobStatus(ctx.args.status) if ctx.args.status else None,
            project_id=ctx.args.project_id,
            limit=max(1, min(ctx.args.limit, 1000)),
        )
        if ctx.args.json:
            print_json([render.job_json(j) for j in found])
        else:
            render.console.print(render.jobs_table(found))
        return 0

    return await with_app(ctx, go)


async def events(ctx: Context) -> int:
    async def go(app: App) -> int:
        await app.store.get(ctx.args.job_id)  # JobNotFound for an unknown id
        entries = await app.store.history(ctx.args.job_id)
        if ctx.args.json:
            print_json([render.entry_json(e) for e in entries])
        else:
            render.console.print(render.events_table(entries))
        return 0

    return await with_app(ctx, go)


async def cancel(ctx: Context) -> int:
    async def go(app: App) -> int:
        job = await app.workflow.cancel(ctx.args.job_id, reason=ctx.args.reason)
        if job.status is JobStatus.RUNNING:
            print(f"cancellation of running job {job.id} requested; its worker stops it shortly")
        else:
            print(f"job {job.id} {job.status}")
        return 0

    return await with_app(ctx, go)


async def modules(ctx: Context) -> int:
    async def go(app: App) -> int:
        rows: list[dict[str, Any]] = [
            {
                "name": m.name,
                "version": m.version,
                "expected_runtime_s": m.expected_runtime,
                "timeout_s": m.timeout,
                "description": m.description,
            }
            for m in app.registry
        ]
        if ctx.args.json:
            print_json(rows)
            return 0
        table = Table(box=None, header_style="dim")
        for column in ("module", "version", "expected", "timeout", "description"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                row["name"],
                row["version"],
                f"{row['expected_runtime_s']:g} s",
                f"{row['timeout_s']:g} s",
                row["description"],
            )
        render.console.print(table)
        return 0

    return await with_app(ctx, go)


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


async def webhooks_add(ctx: Context) -> int:
    args = ctx.args
    secret = os.environ.get(args.secret_env, "") if args.secret_env else (args.secret or "")
    if len(secret) < 16:
        source = f"${args.secret_env}" if args.secret_env else "--secret"
        raise InvalidRequest(f"secret: {source} must hold at least 16 characters", field="secret")
    events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events else list(SUBSCRIBABLE_EVENTS)
    unknown = sorted(set(events) - set(SUBSCRIBABLE_EVENTS))
    if unknown:
        raise InvalidRequest(f"events: unknown {', '.join(unknown)} (known: {', '.join(SUBSCRIBABLE_EVENTS)})")
    project_id = validate_project_id(args.project_id)
    subscription = Subscription(
        id=secrets.token_hex(8),
        project_id=project_id,
        url=check_url(args.url),
        secret=secret,
        events=tuple(dict.fromkeys(events)),
        created_ns=now_ns(),
    )

    async def go(app: App) -> int:
        await webhook_store(app.store).add_subscription(subscription)
        print(subscription.id)
        return 0

    return await with_app(ctx, go)


async def webhooks_list(ctx: Context) -> int:
    async def go(app: App) -> int:
        found = await webhook_store(app.store).list_subscriptions(project_id=ctx.args.project_id)
        if ctx.args.json:
            print_json(
                [{"id": s.id, "project_id": s.project_id, "url": s.url, "events": list(s.events)} for s in found]
            )
            return 0
        table = Table(box=None, header_style="dim")
        for column in ("id", "project", "url", "events"):
            table.add_column(column)
        for s in found:
            table.add_row(s.id, s.project_id, s.url, ", ".join(s.events))
        render.console.print(table)
        return 0

    return await with_app(ctx, go)


async def webhooks_remove(ctx: Context) -> int:
    async def go(app: App) -> int:
        await webhook_store(app.store).delete_subscription(ctx.args.subscription_id)
        print(f"webhook {ctx.args.subscription_id} removed")
        return 0

    return await with_app(ctx, go)


async def webhooks_deliveries(ctx: Context) -> int:
    async def go(app: App) -> int:
        hooks = webhook_store(app.store)
        if ctx.args.subscription:
            await hooks.get_subscription(ctx.args.subscription)
        if ctx.args.job_id:
            await app.store.get(ctx.args.job_id)
        found = await hooks.list_deliveries(
            job_id=ctx.args.job_id, subscription_id=ctx.args.subscription, limit=ctx.args.limit
        )
        rows: list[dict[str, Any]] = []
        for d in found:
            rows.append(
                {
                    "id": d.id,
                    "subscription_id": d.subscription_id,
                    "job_id": d.job_id,
                    "event": d.event,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_status_code": d.last_status_code,
                    "last_error": d.last_error,
                    "history": [
                        {
                            "attempt": a.attempt,
                            "outcome": a.outcome,
                            "status_code": a.status_code,
                            "error": a.error,
                            "duration_ms": a.duration_ms,
                        }
                        for a in await hooks.attempts(d.id)
                    ],
                }
            )
        if ctx.args.json:
            print_json(rows)
            return 0
        table = Table(box=None, header_style="dim")
        for column in ("delivery", "job", "event", "status", "attempts", "last"):
            table.add_column(column)
        for row in rows:
            last = row["last_error"] or (str(row["last_status_code"]) if row["last_status_code"] else "")
            table.add_row(row["id"], row["job_id"], row["event"], row["status"], str(row["attempts"]), last)
        render.console.print(table)
        return 0

    return await with_app(ctx, go)


def add_webhook_commands(sub: Any) -> None:
    p = sub.add_parser("webhooks", help="webhook subscriptions and their deliveries")
    hooks = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    add = hooks.add_parser("add", help="subscribe a URL to a project's lifecycle events")
    add.add_argument("--project-id", required=True)
    add.add_argument("--url", required=True)
    secret = add.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-env", metavar="VAR", help="environment variable holding the signing secret")
    secret.add_argument("--secret", help="the signing secret (visible in the process list: prefer --secret-env)")
    add.add_argument("--events", help=f"comma-separated, default all of: {', '.join(SUBSCRIBABLE_EVENTS)}")
    add.set_defaults(handler=webhooks_add, log_level_default="error", telemetry=False)
    ls = hooks.add_parser("list", help="list subscriptions")
    ls.add_argument("--project-id")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=webhooks_list, log_level_default="error", telemetry=False)
    rm = hooks.add_parser("remove", help="delete a subscription")
    rm.add_argument("subscription_id")
    rm.set_defaults(handler=webhooks_remove, log_level_default="error", telemetry=False)
    dl = hooks.add_parser("deliveries", help="delivery history, with every attempt")
    dl.add_argument("--job-id")
    dl.add_argument("--subscription")
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=webhooks_deliveries, log_level_default="error", telemetry=False)


def add_telemetry_commands(sub: Any) -> None:
    """``trace`` and ``report``: terminal views over the embedded telemetry files."""
    from orchestrator.cli import views

    p = sub.add_parser("trace", help="a job's trace as a waterfall (embedded telemetry files)")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=views.trace_command, log_level_default="warning", telemetry=False)

    p = sub.add_parser("report", help="answer the four operational questions from the telemetry files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=views.report_command, log_level_default="warning", telemetry=False)
