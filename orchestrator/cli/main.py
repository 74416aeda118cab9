"""The ``orchestrator`` command line.

User errors (an unknown module, a missing path, an unknown job, an illegal cancel)
print one line on stderr and exit with status 2; a store that cannot be reached
exits 1. No traceback is shown for either.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio
import pydantic

from orchestrator import __version__
from orchestrator.bootstrap import App, open_app
from orchestrator.cli.inputs import add_job_inputs, request_from_args
from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobStatus,
    OrchestratorError,
)
from orchestrator.job_queue.watchdog import ExitWatchdog
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.modules.runners import leave_blocked_threads
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from orchestrator.usecases.execute import abandoned_modules
from otel.environment import TelemetryConfigError
from otel.logs import EVENT_KEY, configure_logging, log_thread_exceptions
from otel.setup import Telemetry, setup_telemetry

__all__ = ["DEMO_DIR", "main", "request_from_args"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
#: 128 + SIGPIPE, as a shell reports a command whose reader went away (``| head``).
EXIT_BROKEN_PIPE = 141
#: Where ``orchestrator demo`` works unless ``demo --dir`` says otherwise: never the
#: data directory that run/submit/worker use.
DEMO_DIR = Path(".orchestrator-demo")
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


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], or one line saying what is wanted."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import commands, demo, maintenance, run, webhook_commands

    parser = _Parser(prog="orchestrator", description="Analysis jobs, observable end to end with OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (env ORCHESTRATOR_DATA_DIR, default ./.orchestrator)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level on stderr")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="log format on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    job_inputs = add_job_inputs

    p = sub.add_parser("demo", help="run the demo on the embedded default, in a directory of its own")
    p.add_argument(
        "--dir",
        type=Path,
        default=DEMO_DIR,
        help=f"the demo's own directory (default ./{DEMO_DIR}); --data-dir and ORCHESTRATOR_DATA_DIR are "
        "not used, so the demo never touches the data of run/submit/worker",
    )
    p.add_argument("--keep", action="store_true", help="keep earlier demo data (default: start afresh)")
    p.set_defaults(handler=demo.demo, log_level_default="critical", telemetry=True)

    p = sub.add_parser("run", help="create one job and run it in this process (Ctrl-C cancels it)")
    job_inputs(p)
    p.set_defaults(handler=run.run, log_level_default="warning", telemetry=True)

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

    p = sub.add_parser("jobs", help="list jobs, newest first (whole ids when piped)")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument(
        "--error-category",
        choices=[c.value for c in ErrorCategory],
        help="only failed or cancelled jobs of this error category",
    )
    p.add_argument("--project-id")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only jobs created since: a duration back from now (30m, 6h, 2d) or an ISO time",
    )
    p.add_argument("--limit", type=int_between(1, 1000), default=50, help="at most this many jobs (1-1000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.jobs, log_level_default="error", telemetry=False)

    p = sub.add_parser("events", help="a job's lifecycle history")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.events, log_level_default="error", telemetry=False)

    p = sub.add_parser("cancel", help="cancel a job; says what will happen to a running one")
    p.add_argument("job_id")
    p.add_argument("--reason", default="cancelled by user")
    p.set_defaults(handler=commands.cancel, log_level_default="error", telemetry=True)

    p = sub.add_parser("modules", help="list registered modules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=commands.modules, log_level_default="error", telemetry=False)

    p = sub.add_parser(
        "serve",
        help="the HTTP API, with in-process workers and the webhook dispatcher",
        description="API jobs may only analyse paths inside ORCHESTRATOR_SOURCE_ROOTS; without "
        "ORCHESTRATOR_API_TOKEN only a loopback --host is allowed (see README: Security).",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_between(0, 65535), default=8000, help="TCP port (0: any free one)")
    p.add_argument("--workers-in-process", type=int_between(0, 64), default=1, help="in-process workers (0: API only)")
    p.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations on start")
    p.set_defaults(handler=_serve, log_level_default=None, telemetry=True)

    commands.add_db_commands(sub)
    maintenance.add_prune_command(sub)
    webhook_commands.add_webhook_commands(sub)
    commands.add_telemetry_commands(sub)
    return parser


async def _serve(ctx: Context) -> int:
    from orchestrator.api.server import ServeOptions, serve

    args = ctx.args
    options = ServeOptions(host=args.host, port=args.port, workers_in_process=args.workers_in_process)
    return await serve(ctx.settings, ctx.telemetry, options)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the command line gives (the rest comes from ``ORCHESTRATOR_*``), and
    the flag that gave each, to name it if the value is refused."""
    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}
    if args.data_dir is not None:
        overrides["data_dir"], flags["data_dir"] = args.data_dir, "--data-dir"
    if args.command == "demo":
        # Its own directory and the embedded SQLite database, whatever the environment
        # names: the demo starts afresh there and must never touch a user's jobs.
        overrides["data_dir"], flags["data_dir"] = args.dir, "demo --dir"
        overrides["database_url"] = None
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if args.log_format is not None:
        overrides["log_format"] = args.log_format
    if getattr(args, "concurrency", None) is not None:
        overrides["concurrency"], flags["concurrency"] = args.concurrency, "--concurrency"
    if getattr(args, "no_migrate", False):
        overrides["auto_migrate"] = False
    return overrides, flags


def _not_a_directory(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a directory: it, or the nearest part of it that
    exists, is something else (a file, a device). Nothing is created here."""
    for part in (path, *path.parents):
        try:
            if part.is_dir():
                return None
            if part.exists() or part.is_symlink():
                return f"{part} is not a directory"
        except OSError as exc:  # a name too long, a loop of links
            return exc.strerror or str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while the command line is read and logging and telemetry are set up, or
        # while telemetry is flushed at exit: no command of ours was interrupted.
        code = _fail("interrupted", 130)
    # A module's thread blocked for good (a read of /proc/kmsg, a FIFO) must not keep the
    # process alive once the command is done: see leave_blocked_threads.
    return leave_blocked_threads(code)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides, flags = _settings(args)
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        given = flags.get(field, f"ORCHESTRATOR_{field.upper()}")  # the flag when the value came from one
        return _fail(f"invalid setting {field} ({given}): {first['msg']}", EXIT_USAGE)
    unusable = _not_a_directory(settings.data_dir)
    if unusable is not None:  # before the store and the telemetry files each fail in it
        given = flags.get("data_dir", "ORCHESTRATOR_DATA_DIR")
        return _fail(f"the data directory {settings.data_dir} ({given}) cannot be used: {unusable}", EXIT_USAGE)
    # --log-level, else ORCHESTRATOR_LOG_LEVEL when set, else the command's own default
    # (quiet for one-shot commands, info for the worker).
    explicit = "log_level" in settings.model_fields_set
    level = args.log_level or (settings.log_level if explicit else None) or args.log_level_default or "info"
    stream = configure_logging(level.upper(), settings.log_format)
    log_thread_exceptions()
    if level != "debug" and stream.formatter is not None:
        stream.setFormatter(_BriefPluginErrors(stream.formatter))
    if not explicit and args.log_level is None and args.log_level_default is not None:
        stream.addFilter(_ShownElsewhere())
    try:
        telemetry = (
            setup_telemetry(service_version=__version__, telemetry_dir=settings.telemetry_dir)
            if args.telemetry
            else Telemetry(mode="disabled")
        )
    except TelemetryConfigError as exc:  # an OTEL_* value, or the Prometheus port taken
        return _fail(exc.message, EXIT_USAGE)
    # SIGTERM ends the process like Ctrl-C does, so telemetry is still flushed on exit.
    previous = signal.signal(signal.SIGTERM, _sigterm)
    handler: Handler = args.handler
    try:
        guard = _AbandonedExit(telemetry)
        try:
            code = anyio.run(_leaving, handler, Context(args, settings, telemetry), guard)
        except BaseExceptionGroup as group:
            raise _alone(group) from None  # a task group's wrapping of one error
        finally:
            guard.disarm()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except (OrchestratorError, KeyboardInterrupt) as exc:
        code, message = _exit_of(exc)
        return _fail(message, code)
    except BaseException as exc:
        if _only_broken_pipes(exc):
            return _closed_pipe()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        telemetry.shutdown(timeout_s=5.0)
        _note_lost_telemetry(telemetry)
        logging.shutdown()


#: Time modules this process abandoned get to end once its command is done (asyncio
#: cancels every task at exit and waits for each: one that ignores it would hold the exit).
ABANDONED_EXIT_SECONDS = 2.0


class _AbandonedExit:
    """Ends the process when modules its command abandoned (they ignored their
    cancellation) hold its exit: armed as the command ends, disarmed once the event loop
    is closed, when everything else runs as usual."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._watchdog: ExitWatchdog | None = None

    def arm(self, code: int, error: str | None = None) -> None:
        left = abandoned_modules()
        if not left:
            return
        # What the command wrote (run --json's result) must not stay in a buffer os._exit drops.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        message = (
            f"abandoned module{'s' if len(left) > 1 else ''} still running ({'; '.join(left)}): "
            "exiting without waiting for them"
        )
        if error is not None:
            message = f"error: {_one_line(error)}; {message}"
        self._watchdog = ExitWatchdog(
            ABANDONED_EXIT_SECONDS, flush=self._telemetry.flush, exit_code=code, message=message
        )
        self._watchdog.arm()

    def disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()


async def _leaving(handler: Handler, ctx: Context, guard: _AbandonedExit) -> int:
    """The command, then ``guard`` armed with its exit code (and error, if it failed)."""
    try:
        code = await handler(ctx)
    except BaseException as exc:
        guard.arm(*_exit_of(exc))
        raise
    guard.arm(code)
    return code


def _exit_of(exc: BaseException) -> tuple[int, str]:
    """The exit code and the error line ``_main`` gives a command's exception."""
    if isinstance(exc, BaseExceptionGroup):
        exc = _alone(exc)
    if isinstance(exc, OrchestratorError):
        return (EXIT_USAGE if exc.category in _USER_ERRORS else EXIT_FAILED), exc.message
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    return EXIT_FAILED, f"{type(exc).__name__}: {exc}"


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested exception groups (as anyio task groups wrap it), or the
    group itself when it holds several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _closed_pipe() -> int:
    """The reader of stdout went away (``orchestrator jobs --json | head``): stop quietly.
    stdout is pointed at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _note_lost_telemetry(telemetry: Telemetry) -> None:
    """One line at exit when telemetry could not be delivered: jobs are unaffected, but
    the operator should know the traces of this command are missing."""
    failed = {kind: n for kind, n in telemetry.failures.items() if n}
    # Telemetry.shutdown stops waiting for its "otel-shutdown" threads after its budget:
    # one still alive is an export that did not finish (a collector that does not answer).
    pending = any(t.name == "otel-shutdown" and t.is_alive() for t in threading.enumerate())
    if not failed and not pending:
        return
    where = _otlp_target() if telemetry.mode == "otlp" else str(telemetry.telemetry_dir or "the telemetry files")
    parts = [f"{n} {kind} batch{'es' if n > 1 else ''} failed" for kind, n in sorted(failed.items())]
    if pending:
        parts.append("some still being sent at exit")
    print(
        f"orchestrator: note: telemetry could not be delivered to {where} ({', '.join(parts)}); jobs are not affected",
        file=sys.stderr,
    )


def _otlp_target() -> str:
    raw = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or next(
        (
            v.strip()
            for k, v in sorted(os.environ.items())
            if k.startswith("OTEL_EXPORTER_OTLP_") and k.endswith("_ENDPOINT") and v.strip()
        ),
        "",
    )
    try:
        parts = urlsplit(raw)
        # host and port only: a URL may carry credentials
        port = f":{parts.port}" if parts.port else ""
        return f"the OTLP endpoint {parts.hostname}{port}" if parts.hostname else "the OTLP endpoint"
    except ValueError:
        return "the OTLP endpoint"


_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fail(message: str, code: int) -> int:
    print(f"orchestrator: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(message: str) -> str:
    # One line, always. Multi-line messages (a database driver's "...\n\tIs the server
    # running...") become one sentence; other control characters are shown escaped.
    message = _LINE_BREAKS.sub(" ", message.strip())
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def exit_code(job: Job) -> int:
    return {JobStatus.COMPLETED: EXIT_OK, JobStatus.CANCELLED: EXIT_CANCELLED}.get(job.status, EXIT_FAILED)


async def with_app(ctx: Context, fn: Callable[[App], Awaitable[int]], *, modules: bool = True) -> int:
    """Open the app around ``fn``. Commands that run or validate no module pass
    ``modules=False``: third-party modules are not loaded (a broken one stays silent)."""
    registry = None if modules else ModuleRegistry.default(entry_points=False)
    async with open_app(ctx.settings, telemetry=ctx.job_telemetry(), registry=registry) as app:
        return await fn(app)


class _BriefPluginErrors(logging.Formatter):
    """A third-party module that fails to load is one line on the terminal, naming it;
    its traceback only with ``--log-level debug`` (it would otherwise repeat on every
    command). Other handlers (the OTLP export) still get the whole record."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "orchestrator.modules.registry" and record.exc_info:
            brief = copy.copy(record)
            brief.exc_info, brief.exc_text, brief.stack_info = None, None, None
            brief.msg, brief.args = f"{record.getMessage()} (traceback with --log-level debug)", None
            return self._inner.format(brief)
        return self._inner.format(record)


class _ShownElsewhere(logging.Filter):
    """Records a one-shot command shows in its own output anyway, kept off the terminal
    unless a log level was asked for: a job's lifecycle and module records (``run``
    prints the job's result, with every module's outcome)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(getattr(record, EVENT_KEY, "")).startswith(("job.lifecycle.", "job.module."))
