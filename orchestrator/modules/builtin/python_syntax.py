"""``python_syntax``: parse every Python file and report the syntax errors.

A syntax error in the analysed project is a finding, not a module failure: the
module succeeds and lists it.
"""

from __future__ import annotations

import symtable
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext
from orchestrator.modules.index import FileEntry
from orchestrator.modules.job_files import ScanResult
from orchestrator.modules.scan import FileContent

__all__ = ["PythonSyntaxModule", "syntax_error"]

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


def syntax_error(source: bytes, filename: str) -> dict[str, Any] | None:
    """The first syntax error in ``source``, or ``None`` if it compiles that far.

    ``symtable`` runs the parser and then the symbol-table pass, without building the
    Python AST objects ``ast.parse`` makes (a third less CPU on real trees). So it also
    reports the errors of that pass (``nonlocal`` at module level, a name both global and
    a parameter), which the interpreter reports at import as well; errors found only
    while generating bytecode (``return`` outside a function) are not reported.
    """
    try:
        # Bytes (not decoded text) let the parser honour PEP 263 coding cookies and
        # BOMs exactly as the interpreter would.
        with _quiet_parser_warnings():
            symtable.symtable(source, filename, "exec")  # type: ignore[arg-type]  # bytes are accepted
    except SyntaxError as exc:  # includes IndentationError and TabError
        return {"path": filename, "line": exc.lineno, "column": exc.offset, "message": exc.msg}
    except (ValueError, RecursionError, MemoryError) as exc:
        # ValueError: e.g. a NUL byte; RecursionError/MemoryError: absurdly deep nesting.
        message = str(exc) or type(exc).__name__
        return {"path": filename, "line": None, "column": None, "message": message}
    return None


class _SyntaxAnalyzer(FileAnalyzer[dict[str, Any]]):
    def select(self, entry: FileEntry) -> bool:
        return entry.suffix in PYTHON_SUFFIXES

    def analyze(self, entry: FileEntry, content: FileContent) -> dict[str, Any] | None:
        assert content.data is not None
        return syntax_error(content.data, entry.relpath)


def summarise(result: ScanResult[dict[str, Any]]) -> dict[str, Any]:
    errors = [error for _entry, error in result.results]
    return {
        "files_checked": result.analyzed,
        "error_count": len(errors),
        "errors": errors[:MAX_ERRORS],
        "errors_truncated": len(errors) > MAX_ERRORS,
        "walk": result.stats.as_dict(),
    }


class PythonSyntaxModule(BaseModule):
    name: ClassVar[str] = "python_syntax"
    option_names: ClassVar[frozenset[str] | None] = frozenset()  # takes no options
    version: ClassVar[str] = "1.1.0"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Parses every Python file and lists the syntax errors found."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return summarise(await context.scan(_SyntaxAnalyzer()))
