"""``orchestrator webhooks``: subscriptions and their delivery history."""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

from orchestrator.cli import render
from orchestrator.cli.ids import resolve_job, resolve_subscription
from orchestrator.cli.main import Context, int_between, print_json, with_app
from orchestrator.cli.render import Column
from orchestrator.domain import InvalidRequest, now_ns
from orchestrator.domain.values import MAX_STORED_INT
from orchestrator.usecases.create import validate_project_id
from orchestrator.webhooks.models import SUBSCRIBABLE_EVENTS, Subscription, display_url, url_fingerprint
from orchestrator.webhooks.store import webhook_store
from orchestrator.webhooks.targets import check_subscription_url

if TYPE_CHECKING:
    from orchestrator.bootstrap import App

__all__ = ["add_webhook_commands"]


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
    # The delivery rule, checked now: a non-public target would only ever be refused.
    url = await check_subscription_url(
        args.url,
        allow_private=ctx.settings.webhook_allow_private,
        private_hosts=ctx.settings.webhook_private_hosts,
    )
    subscription = Subscription(
        id=secrets.token_hex(8),
        project_id=project_id,
        url=url,
        secret=secret,
        events=tuple(dict.fromkeys(events)),
        created_ns=now_ns(),
    )

    async def go(app: App) -> int:
        await webhook_store(app.store).add_subscription(subscription)
        print(subscription.id)
        return 0

    return await with_app(ctx, go, modules=False)


async def webhooks_list(ctx: Context) -> int:
    async def go(app: App) -> int:
        found = await webhook_store(app.store).list_subscriptions(project_id=ctx.args.project_id)
        # Never the whole URL: its path or query may be a secret (see README: Webhooks).
        if ctx.args.json:
            print_json(
                [
                    {
                        "id": s.id,
                        "project_id": s.project_id,
                        "url": display_url(s.url),
                        "url_sha256": url_fingerprint(s.url),
                        "events": list(s.events),
                    }
                    for s in found
                ]
            )
            return 0
        render.print_table(
            (
                Column("id", whole=True),
                Column("project"),
                Column("url", whole=True),
                Column("url_sha256", whole=True),
                Column("events"),
            ),
            ([s.id, s.project_id, display_url(s.url), url_fingerprint(s.url), ",".join(s.events)] for s in found),
        )
        return 0

    return await with_app(ctx, go, modules=False)


async def webhooks_remove(ctx: Context) -> int:
    async def go(app: App) -> int:
        hooks = webhook_store(app.store)
        subscription = await resolve_subscription(hooks, ctx.args.subscription_id)
        await hooks.delete_subscription(subscription.id)
        print(f"webhook {subscription.id} removed")
        return 0

    return await with_app(ctx, go, modules=False)


async def webhooks_deliveries(ctx: Context) -> int:
    async def go(app: App) -> int:
        hooks = webhook_store(app.store)
        subscription_id = (
            (await resolve_subscription(hooks, ctx.args.subscription)).id if ctx.args.subscription else None
        )
        job_id = (await resolve_job(app.store, ctx.args.job_id)).id if ctx.args.job_id else None
        found = await hooks.list_deliveries(
            job_id=job_id, subscription_id=subscription_id, limit=ctx.args.limit, before=ctx.args.before
        )
        rows: list[dict[str, Any]] = []
        for d in found:
            rows.append(
                {
                    "seq": d.seq,
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
        columns = (
            Column("seq", "right"),
            Column("delivery", whole=True),
            Column("subscription", whole=True),
            Column("job", whole=True),
            Column("event"),
            Column("status"),
            Column("attempts", "right"),
            Column("last"),
        )
        render.print_table(
            columns,
            (
                [
                    str(row["seq"]),
                    str(row["id"]),
                    row["subscription_id"],
                    row["job_id"],
                    row["event"],
                    row["status"],
                    str(row["attempts"]),
                    row["last_error"] or (str(row["last_status_code"]) if row["last_status_code"] else ""),
                ]
                for row in rows
            ),
        )
        return 0

    return await with_app(ctx, go, modules=False)


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
    add.set_defaults(handler=webhooks_add, log_level_default="critical", telemetry=False)
    ls = hooks.add_parser("list", help="list subscriptions")
    ls.add_argument("--project-id")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=webhooks_list, log_level_default="critical", telemetry=False)
    rm = hooks.add_parser("remove", help="delete a subscription")
    rm.add_argument("subscription_id")
    rm.set_defaults(handler=webhooks_remove, log_level_default="critical", telemetry=False)
    dl = hooks.add_parser("deliveries", help="delivery history, with every attempt")
    dl.add_argument("--job-id")
    dl.add_argument("--subscription")
    dl.add_argument(
        "--limit", type=int_between(1, 500), default=100, help="the latest N deliveries, oldest first (1-500)"
    )
    dl.add_argument(
        "--before",
        type=int_between(1, MAX_STORED_INT),
        metavar="SEQ",
        help="only deliveries below this seq (a page's first seq: the page before it)",
    )
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=webhooks_deliveries, log_level_default="critical", telemetry=False)
