"""``orchestrator prune``: retention of finished jobs and of the embedded telemetry files."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.cli.ids import resolve_job
from orchestrator.cli.main import Context, print_json, with_app
from orchestrator.domain import InvalidRequest
from orchestrator.usecases.prune import PruneUseCase, before

if TYPE_CHECKING:
    from orchestrator.bootstrap import App

__all__ = ["add_prune_command", "parse_age"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds, as seconds."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidRequest(f"--older-than: {text!r} is not an age such as 30d, 12h, 90m or 3600", field="older_than")
    return float(match[1]) * _UNITS[match[2] or "s"]


async def prune(ctx: Context) -> int:
    args = ctx.args
    if not args.job and args.older_than is None:
        raise InvalidRequest("prune: give --older-than AGE (e.g. 30d) or --job ID", field="older_than")

    async def go(app: App) -> int:
        if args.job:
            return await _delete(app, args.job, dry_run=args.dry_run, as_json=args.json)
        cutoff = before(parse_age(args.older_than))
        # This host's rotated telemetry files go too (whatever the store: they are local).
        use_case = PruneUseCase(app.store, telemetry_dir=ctx.settings.telemetry_dir)
        report = await use_case.execute(before_ns=cutoff, dry_run=args.dry_run)
        if args.json:
            print_json(
                {
                    "jobs": report.jobs,
                    "telemetry_files": report.telemetry_files,
                    "telemetry_bytes": report.telemetry_bytes,
                    "dry_run": report.dry_run,
                    "held": report.held,
                }
            )
        else:
            verb = "would delete" if report.dry_run else "deleted"
            print(
                f"{verb} {report.jobs} finished jobs older than {args.older_than} (with their history and webhook "
                f"deliveries) and {report.telemetry_files} rotated telemetry files ({report.telemetry_bytes} bytes)"
            )
        if report.held:
            print(
                f"orchestrator: warning: left {report.held} finished jobs in place: another database session "
                "held their rows (a transaction left open?) or they finished during the prune; run prune again later",
                file=sys.stderr,
            )
        return 0

    return await with_app(ctx, go)


async def _delete(app: App, names: list[str], *, dry_run: bool, as_json: bool) -> int:
    """Delete named finished jobs (including damaged ones); a job still in flight is refused."""
    jobs = [await resolve_job(app.store, name) for name in names]
    unfinished = [j for j in jobs if not j.status.terminal]
    if unfinished:
        listed = ", ".join(f"{j.id} ({j.status})" for j in unfinished)
        raise InvalidRequest(f"--job: only finished jobs can be deleted; cancel these first: {listed}", field="job")
    deleted = [] if dry_run else await app.store.delete_jobs([j.id for j in jobs])
    if as_json:
        print_json({"jobs": [j.id for j in jobs] if dry_run else deleted, "dry_run": dry_run})
    else:
        for job_id in [j.id for j in jobs] if dry_run else deleted:
            print(f"{'would delete' if dry_run else 'deleted'} job {job_id}")
    return 0


def add_prune_command(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "prune", help="delete finished jobs older than an age (history, deliveries, rotated telemetry files)"
    )
    p.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h, 90m, 3600 (seconds)")
    p.add_argument("--job", action="append", metavar="ID", help="delete this finished job (repeatable; a prefix works)")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=prune, log_level_default="warning", telemetry=False)
