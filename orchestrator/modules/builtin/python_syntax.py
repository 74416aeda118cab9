"""``python_syntax``: parse every Python file and report the syntax errors.

A syntax error in the analysed project is a finding, not a module failure: the
module succeeds and lists it.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, ModuleContext
from orchestrator.modules.files import WalkStats, check_source, display_path, iter_files, read_bytes

__all__ = ["PythonSyntaxModule", "check_python_syntax"]

MAX_ERRORS: Final = 50
PYTHON_SUFFIXES: Final = frozenset({".py", ".pyi"})


@contextmanager
def _quiet_parser_warnings() -> Iterator[None]:
    """Silence the parser's warnings about legal-but-deprecated code (``"\\d"``, ``1if``).

    They are not syntax errors, yet where warnings are errors (``-W error``, pytest's
    ``filterwarnings = error``) the parser turns them into SyntaxErrors, which would be
    misreported as findings. ``catch_warnings`` swaps process-wide state, hence the
    narrow filters: only those parser messages are ignored while a scan runs.
    """
    with warnings.catch_warnings():
        for category in (SyntaxWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message="invalid ", category=category)
        yield


def _syntax_error(source: bytes, filename: str) -> dict[str, Any] | None:
    """The first syntax error in ``source``, or ``None`` if it parses."""
    try:
        # Parsing bytes (not decoded text) lets the parser honour PEP 263 coding
        # cookies and BOMs exactly as the interpreter would.
        ast.parse(source, filename=filename)
    except SyntaxError as exc:  # includes IndentationError and TabError
        return {"path": filename, "line": exc.lineno, "column": exc.offset, "message": exc.msg}
    except (ValueError, RecursionError) as exc:
        # ValueError: e.g. an undecodable source; RecursionError: absurdly deep nesting.
        message = str(exc) or type(exc).__name__
        return {"path": filename, "line": None, "column": None, "message": message}
    return None


def check_python_syntax(source: Path, ctx: ModuleContext) -> dict[str, Any]:
    check_source(source, ctx.module)
    stats = WalkStats()
    checked = 0
    errors: list[dict[str, Any]] = []
    error_count = 0
    with _quiet_parser_warnings():
        for path in iter_files(source, ctx=ctx, stats=stats):
            if path.suffix.lower() not in PYTHON_SUFFIXES:
                continue
            data = read_bytes(path, stats=stats)
            if data is None:
                continue
            checked += 1
            error = _syntax_error(data, display_path(path, source))
            if error is not None:
                error_count += 1
                if len(errors) < MAX_ERRORS:
                    errors.append(error)
    return {
        "files_checked": checked,
        "error_count": error_count,
        "errors": errors,
        "errors_truncated": error_count > len(errors),
        "walk": stats.as_dict(),
    }


class PythonSyntaxModule(BaseModule):
    name: ClassVar[str] = "python_syntax"
    version: ClassVar[str] = "1.0.0"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Parses every Python file and lists the syntax errors found."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return await context.run_sync(check_python_syntax, context.source, context)
