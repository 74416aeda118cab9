"""The ``orchestrator`` console script: imports the command line, then runs it.

Importing the program takes a moment (anyio, pydantic, OpenTelemetry); a Ctrl-C in that
moment is one line and status 130, like a Ctrl-C anywhere else before a command runs,
instead of Python's traceback through the import machinery. So is an ``OTEL_*`` value
OpenTelemetry would raise on while it is imported (a span limit that is not a number,
an unknown propagator): checked first, refused in one line naming the variable, status 2."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from otel.environment import TelemetryConfigError, check_environment

        try:
            check_environment()
        except TelemetryConfigError as exc:
            sys.stderr.write(f"orchestrator: error: {exc.message}\n")
            return 2  # EXIT_USAGE, as for an invalid ORCHESTRATOR_* setting
        from orchestrator.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("orchestrator: error: interrupted\n")
        return 130
    return run()
