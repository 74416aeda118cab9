"""The ``orchestrator`` command line.

User errors (an unknown module, a missing path, an unknown job, an illegal cancel)
print one line on stderr and exit with status 2; a store that cannot be reached
exits 1. No traceback is shown for either.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pydantic

from orchestrator import __version__
from orchestrator.bootstrap import App, open_app
from orchestrator.domain import (
    ErrorCategory,
    InvalidRequest,
    Job,
    JobStatus,
    OrchestratorError,
)
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from otel.logs import configure_logging
from otel.setup import Telemetry, setup_telemetry

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
_USER_ERRORS = frozenset({ErrorCategory.VALIDATION, ErrorCategory.TRANSITION})


@dataclass
class Context:
    args: argparse.Namespace
    settings: Settings
    telemetry: Telemetry

    def job_telemetry(self) -> JobTelemetry:
        t = self.telemetry
        return JobTelemetry(t.tracer_provider, t.meter_provider, t.sampler)


Handler = Callable[[Context], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import commands, demo

    parser = _Parser(prog="orchestrator", description="Analysis jobs, observable end to end with OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (env ORCHESTRATOR_DATA_DIR, default ./.orchestrator)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level on stderr")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="log format on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def job_inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", required=True, help="path to analyse")
        p.add_argument("--project-id", help="project id (default: the source folder's name)")
        p.add_argument("--modules", help="comma-separated modules (default: all)")
        p.add_argument("--fail-fast", action="store_true", help="cancel the other modules at the first failure")
        p.add_argument("--module-concurrency", type=int, help="modules of this job that run at once")
        p.add_argument("--traceparent", help="W3C traceparent of the caller's trace, linked from the job's root span")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demo", help="run the demo on the embedded default")
    p.add_argument("--keep", action="store_true", help="keep earlier demo data (default: start afresh)")
    p.set_defaults(handler=demo.demo, log_level_default="critical", telemetry=True)

    p = sub.add_parser("run", help="create one job, run it in-process, wait for it")
    job_inputs(p)
    p.set_defaults(handler=commands.run, log_level_default="warning", telemetry=True)

    p = sub.add_parser("submit", help="create one job and queue it; prints its id")
    job_inputs(p)
    p.set_defaults(handler=commands.submit, log_level_default="warning", telemetry=True)

    p = sub.add_parser("worker", help="run a worker until SIGINT/SIGTERM")
    p.add_argument("--concurrency", type=int, help="jobs run at once (env ORCHESTRATOR_CONCURRENCY)")
    p.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations on start")
    p.set_defaults(handler=commands.worker, log_level_default=None, telemetry=True)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.status, log_level_default="error", telemetry=False)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--project-id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.jobs, log_level_default="error", telemetry=False)

    p = sub.add_parser("events", help="a job's lifecycle history")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.events, log_level_default="error", telemetry=False)

    p = sub.add_parser("cancel", help="cancel a job (a running one within a bounded time)")
    p.add_argument("job_id")
    p.add_argument("--reason", default="cancelled by user")
    p.set_defaults(handler=commands.cancel, log_level_default="error", telemetry=True)

    p = sub.add_parser("modules", help="list registered modules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.modules, log_level_default="error", telemetry=False)

    p = sub.add_parser("serve", help="the HTTP API, with in-process workers and the webhook dispatcher")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers-in-process", type=int, default=1, help="in-process workers (0: API only)")
    p.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations on start")
    p.set_defaults(handler=_serve, log_level_default=None, telemetry=True)

    commands.add_db_commands(sub)
    commands.add_webhook_commands(sub)
    commands.add_telemetry_commands(sub)
    return parser


async def _serve(ctx: Context) -> int:
    from orchestrator.api.server import serve

    return await serve(ctx)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if args.log_format is not None:
        overrides["log_format"] = args.log_format
    if getattr(args, "concurrency", None) is not None:
        overrides["concurrency"] = args.concurrency
    if getattr(args, "no_migrate", False):
        overrides["auto_migrate"] = False
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return _fail(f"invalid setting {field} (ORCHESTRATOR_{field.upper()}): {first['msg']}", EXIT_USAGE)
    # --log-level, else ORCHESTRATOR_LOG_LEVEL when set, else the command's own default
    # (quiet for one-shot commands, info for the worker).
    explicit = "log_level" in settings.model_fields_set
    level = args.log_level or (settings.log_level if explicit else None) or args.log_level_default or "info"
    configure_logging(level.upper(), settings.log_format)
    telemetry = (
        setup_telemetry(service_version=__version__, telemetry_dir=settings.telemetry_dir)
        if args.telemetry
        else Telemetry(mode="disabled")
    )
    # SIGTERM ends the process like Ctrl-C does, so telemetry is still flushed on exit.
    previous = signal.signal(signal.SIGTERM, _sigterm)
    handler: Handler = args.handler
    try:
        return anyio.run(handler, Context(args, settings, telemetry))
    except OrchestratorError as exc:
        code = EXIT_USAGE if exc.category in _USER_ERRORS else EXIT_FAILED
        return _fail(exc.message, code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
        telemetry.shutdown(timeout_s=5.0)
        logging.shutdown()


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _fail(message: str, code: int) -> int:
    # One line, always: a path or value quoted in the message may hold line breaks.
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    print(f"orchestrator: error: {message}", file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The create-job request the ``run`` and ``submit`` flags describe."""
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    if args.modules is not None and not modules:
        raise InvalidRequest("--modules: no module named", field="modules")
    options: dict[str, Any] = {"failure_policy": "fail_fast" if args.fail_fast else "complete_all"}
    if args.module_concurrency is not None:
        options["concurrency"] = args.module_concurrency
    return {
        "project_id": args.project_id or (Path(args.source).resolve().name or "project"),
        "source": args.source,
        "modules": modules,
        "options": options,
        "traceparent": args.traceparent,
    }


def exit_code(job: Job) -> int:
    return {JobStatus.COMPLETED: EXIT_OK, JobStatus.CANCELLED: EXIT_CANCELLED}.get(job.status, EXIT_FAILED)


async def with_app(ctx: Context, fn: Callable[[App], Awaitable[int]]) -> int:
    async with open_app(ctx.settings, telemetry=ctx.job_telemetry()) as app:
        return await fn(app)
