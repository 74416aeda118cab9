"""The last resort of a graceful shutdown: a process asked to stop does stop.

A worker gives its running jobs the shutdown grace, then cancels them and requeues them.
That relies on module code honouring cancellation; a module awaiting a blocking call that
cannot be cancelled (``anyio.to_thread.run_sync`` without ``abandon_on_cancel`` on a read
that never returns) would hold the process forever. :class:`ExitWatchdog` is armed when
the stop is asked: if the process is still there when it fires, it says so, flushes
telemetry (bounded) and exits. Nothing is lost: the stuck job keeps its lease until it
expires, then a reaper requeues it (or cancels it, if that was asked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Final, NoReturn

from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["EXIT_MARGIN_SECONDS", "ExitWatchdog", "exit_at_once", "shutdown_exit_seconds"]

log = logging.getLogger(__name__)

#: Time given, beyond the shutdown grace, to cancel and requeue the running jobs.
EXIT_MARGIN_SECONDS: Final = 5.0


def shutdown_exit_seconds(grace_seconds: float, abandon_seconds: float) -> float:
    """When a stopping worker process must be gone: the shutdown grace, then the time a
    module ignoring its cancellation gets before it is abandoned (its job requeued all the
    same), then the margin."""
    return grace_seconds + abandon_seconds + EXIT_MARGIN_SECONDS


class ExitWatchdog:
    """Exits the process ``seconds`` after :meth:`arm` unless :meth:`disarm` is called."""

    def __init__(
        self,
        seconds: float,
        *,
        flush: Callable[[float], None] | None = None,
        exit_code: int = 0,
        exit: Callable[[int], None] = os._exit,
        message: str | None = None,
    ) -> None:
        self.seconds = seconds
        self._message = message
        self._flush = flush
        self._exit_code = exit_code
        self._exit = exit
        self._timer: threading.Timer | None = None
        self.fired = threading.Event()

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.name = "exit-watchdog"
            self._timer.start()

    def disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _fire(self) -> None:
        self.fired.set()
        message = self._message or (
            f"still running {self.seconds:g} s after the stop was asked (a module does not honour cancellation); "
            "exiting now: its job keeps its lease until it expires, then another worker's reaper recovers it"
        )
        # Whatever fails on the way (a closed stderr, a collector gone), the process exits.
        with contextlib.suppress(Exception):
            logs.event(log, logging.ERROR, OperationEvent.FORCED_EXIT, message, seconds=self.seconds)
            print(f"orchestrator: {message}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            if self._flush is not None:
                self._flush(2.0)
        self._exit(self._exit_code)


def exit_at_once(why: str) -> NoReturn:
    """A second interrupt: leave now. The jobs still running keep their leases until they
    expire; then a worker's reaper requeues them (or fails them past their attempts)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr may be gone
        sys.stderr.write(
            f"orchestrator: {why}: exiting at once; jobs still running stay Running until their "
            "leases expire, then a worker's reaper recovers them\n"
        )
        sys.stderr.flush()
    os._exit(130)
