"""The ``orchestrator`` console script: imports the command line, then runs it.

Importing the program takes a moment (anyio, pydantic, OpenTelemetry); a Ctrl-C in that
moment is one line and status 130, like a Ctrl-C anywhere else before a command runs,
instead of Python's traceback through the import machinery."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from orchestrator.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("orchestrator: error: interrupted\n")
        return 130
    return run()
