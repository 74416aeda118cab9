"""What ``run`` and ``submit`` take on the command line, turned into a create-job request.

The request is the API's (``CreateJobRequest``), so both entry points validate the same
way; errors found there name the request's fields, and :func:`flag_error` renames them
to the flags the user typed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Any, Final

from orchestrator.domain import InvalidRequest

__all__ = ["add_job_inputs", "default_project_id", "flag_error", "parse_option", "request_from_args"]

#: Request field (as validation reports it) -> the flag that sets it.
_FLAGS: Final = (
    ("project_id", "--project-id"),
    ("source", "--source"),
    ("modules", "--modules"),
    ("options.concurrency", "--module-concurrency"),
    ("options.failure_policy", "--options-json failure_policy"),
    ("options.module_options", "--option/--options-json"),
    ("options.module_budgets", "--timeout/--expected"),
    ("options", "--options-json"),
    ("traceparent", "--traceparent"),
)
_MAX_SLUG: Final = 64


def add_job_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="path to analyse")
    p.add_argument(
        "--project-id",
        help="project id: letters, digits and . _ : / - (default: derived from the source folder's name)",
    )
    p.add_argument("--modules", help="comma-separated modules (default: all)")
    p.add_argument("--fail-fast", action="store_true", help="cancel the other modules at the first failure")
    p.add_argument("--module-concurrency", type=int, help="modules of this job that run at once")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MODULE.KEY=VALUE",
        help="an option for one module (repeatable); VALUE is JSON when it parses as JSON (5, true, "
        '["a"]), a string otherwise',
    )
    p.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="MODULE=SECONDS",
        help="this job's timeout for one module (repeatable); used as given, not scaled to the project's size",
    )
    p.add_argument(
        "--expected",
        action="append",
        default=[],
        metavar="MODULE=SECONDS",
        help="this job's expected runtime for one module (repeatable): longer is an overrun",
    )
    p.add_argument(
        "--options-json",
        metavar="JSON|@FILE",
        help="the job's options as the API takes them (failure_policy, concurrency, module_options, "
        "module_budgets, ...); the other flags override it",
    )
    p.add_argument("--traceparent", help="W3C traceparent of the caller's trace, linked from the job's root span")
    p.add_argument("--json", action="store_true", help="print JSON")


def default_project_id(source: str) -> str:
    """A valid project id from the source folder's name: ``my project`` -> ``my-project``,
    ``_build`` -> ``build``, ``.dotfiles`` -> ``dotfiles``, ``café`` -> ``cafe``."""
    try:
        name = Path(source).expanduser().resolve().name
    except (OSError, RuntimeError, ValueError):
        name = Path(source).name
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", folded)
    slug = re.sub(r"([-._])[-._]+", r"\1", slug).strip("-._")
    return slug[:_MAX_SLUG].rstrip("-._") or "project"


def parse_option(text: str) -> tuple[str, str, Any]:
    """``module.key=value`` -> (module, key, value); value JSON-decoded when it is JSON."""
    target, sep, raw = text.partition("=")
    module, dot, key = target.partition(".")
    if not sep or not dot or not module.strip() or not key.strip():
        raise InvalidRequest(f'--option {text!r}: expected MODULE.KEY=VALUE, e.g. license.allowed=["MIT"]')
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return module.strip(), key.strip(), value


def _options_json(raw: str) -> dict[str, Any]:
    text = raw
    if raw.startswith("@"):
        text = _options_file(raw[1:])
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"--options-json: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"--options-json: expected a JSON object, got {type(value).__name__}")
    return value


#: The largest ``--options-json @FILE`` read (the API's default body limit).
MAX_OPTIONS_FILE_BYTES: Final = 1024 * 1024


def _options_file(name: str) -> str:
    """The text of a regular file: a FIFO, a device or a socket would block the command
    or never end, so it is opened without waiting (``O_NONBLOCK``) and refused."""
    path = Path(name).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidRequest(f"--options-json: cannot read {name}: {exc.strerror or exc.__class__.__name__}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidRequest(f"--options-json: {name} is not a regular file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_OPTIONS_FILE_BYTES + 1)
    if len(data) > MAX_OPTIONS_FILE_BYTES:
        raise InvalidRequest(f"--options-json: {name} is larger than {MAX_OPTIONS_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"--options-json: {name} is not UTF-8 text") from None


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The create-job request the ``run`` and ``submit`` flags describe."""
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    if args.modules is not None and not modules:
        raise InvalidRequest("--modules: no module named", field="modules")
    options: dict[str, Any] = _options_json(args.options_json) if args.options_json else {}
    if args.fail_fast:
        options["failure_policy"] = "fail_fast"
    if args.module_concurrency is not None:
        options["concurrency"] = args.module_concurrency
    if args.option:
        module_options = options.get("module_options")
        if module_options is None:
            module_options = options["module_options"] = {}
        if not isinstance(module_options, dict):
            raise InvalidRequest("--options-json: module_options must be an object", field="options.module_options")
        for text in args.option:
            module, key, value = parse_option(text)
            per_module = module_options.setdefault(module, {})
            if not isinstance(per_module, dict):
                raise InvalidRequest(f"--options-json: module_options.{module} must be an object")
            per_module[key] = value
    _budgets(options, "timeout_s", "--timeout", args.timeout)
    _budgets(options, "expected_s", "--expected", args.expected)
    return {
        "project_id": args.project_id if args.project_id is not None else default_project_id(args.source),
        "source": args.source,
        "modules": modules,
        "options": options,
        "traceparent": args.traceparent,
    }


def _budgets(options: dict[str, Any], key: str, flag: str, given: list[str]) -> None:
    """``--timeout``/``--expected MODULE=SECONDS`` into ``options.module_budgets``."""
    if not given:
        return
    budgets = options.setdefault("module_budgets", {})
    if not isinstance(budgets, dict):
        raise InvalidRequest("--options-json: module_budgets must be an object", field="options.module_budgets")
    for text in given:
        module, sep, raw = text.partition("=")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not sep or not module.strip() or not math.isfinite(seconds) or seconds <= 0:
            raise InvalidRequest(
                f"{flag} {text!r}: expected MODULE=SECONDS with SECONDS a positive number, e.g. secrets=120"
            )
        per_module = budgets.setdefault(module.strip(), {})
        if not isinstance(per_module, dict):
            raise InvalidRequest(f"--options-json: module_budgets.{module.strip()} must be an object")
        per_module[key] = seconds


def flag_error(exc: InvalidRequest) -> InvalidRequest:
    """The same error, naming the flag the user typed instead of the request's field."""
    field = exc.field or ""
    for name, flag in _FLAGS:
        if field == name or field.startswith(f"{name}."):
            message = exc.message
            if message.startswith(f"{field}:"):
                rest = message[len(field) + 1 :].strip()
                detail = field[len(name) + 1 :]
                message = f"{flag}{f' ({detail})' if detail else ''}: {_readable(name, rest)}"
            elif message.startswith(f"{name}:"):
                message = f"{flag}: {_readable(name, message[len(name) + 1 :].strip())}"
            return InvalidRequest(message, field=exc.field, phase=exc.phase)
    return exc


def _readable(field: str, detail: str) -> str:
    if field == "project_id" and detail.startswith("String should match pattern"):
        return "use letters, digits and . _ : / -, starting with a letter or digit"
    return detail
