"""Noticing an event loop that stopped turning.

A module whose ``async run`` calls blocking code without ``run_sync`` (``time.sleep``, a
blocking read, a long computation) holds the worker's event loop: no heartbeat renews a
lease, no cancellation or timeout is seen, nothing else runs. The job then loses its
lease and ends as ``worker_lost`` (category ``queue``), and nothing pointed at the module.
:class:`LoopStallMonitor` beats on the loop and watches the beat from a thread: when the
loop has been held past a threshold while the worker ran jobs, it logs one warning naming
the module whose code holds it (found on the loop thread's stack) and its job, and one
more when the loop turns again, with how long it was held. Anything else that holds the
loop (a stopped process, code of the process's own) is reported naming the jobs that ran
and their modules.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import anyio

from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["STALL_SECONDS", "LoopStallMonitor"]

log = logging.getLogger(__name__)

#: A loop held this long is reported (well under a lease, well over a slow turn).
STALL_SECONDS: Final = 5.0


class LoopStallMonitor:
    """Run :meth:`run` in the loop's task group; ``running`` says what ran and ``holding``
    which code of it a frame of the loop's thread is in (both called from the thread)."""

    def __init__(
        self,
        running: Callable[[], str],
        *,
        holding: Callable[[FrameType | None], str | None] = lambda frame: None,
        threshold: float = STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._running = running
        self._holding = holding
        self._loop_thread = threading.get_ident()
        self._clock = clock
        self._beat = clock()
        self._stop = threading.Event()
        #: Set each time a stall is reported (and when its end is): tests wait on it.
        self.reported = threading.Event()

    async def run(self) -> None:
        self._stop.clear()
        self._loop_thread = threading.get_ident()
        self._beat = self._clock()
        watcher = threading.Thread(target=self._watch, name="loop-stall-monitor", daemon=True)
        watcher.start()
        try:
            while True:
                self._beat = self._clock()
                await anyio.sleep(self.threshold / 4)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        held_since: float | None = None
        while not self._stop.wait(self.threshold / 4):
            beat = self._beat
            held = self._clock() - beat
            if held_since is None and held > self.threshold:
                running = self._describe()
                if not running:
                    continue  # none of this worker's jobs ran: another worker's monitor reports it
                held_since = beat
                holder = self._holder()
                where = f"by {holder}" if holder is not None else f"while {running} ran"
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.LOOP_BLOCKED,
                    f"the event loop has been held for {held:.1f} s {where}: code in an "
                    "async module that does not await (a blocking call outside run_sync) stops heartbeats, "
                    "cancellations and timeouts; its job may lose its lease",
                    held_s=round(held, 1),
                    holder=holder,
                )
                self.reported.set()
            elif held_since is not None and beat > held_since:
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.LOOP_BLOCKED,
                    f"the event loop turns again after being held for {beat - held_since:.1f} s",
                    held_s=round(beat - held_since, 1),
                )
                held_since = None
                self.reported.set()

    def _holder(self) -> str | None:
        """The module whose code the loop's thread is in now, if it is a module's."""
        try:
            return self._holding(sys._current_frames().get(self._loop_thread))
        except RuntimeError:  # what ran changed as it was read (the loop moved on)
            return None

    def _describe(self) -> str:
        try:
            return self._running()
        except RuntimeError:  # what ran changed as it was read (the loop moved on)
            return "jobs"
