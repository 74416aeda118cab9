"""Module progress: what a module reports, throttled before anyone sees it.

A module calls ``context.progress(done, total)`` as often as it likes (once per file is
fine). :class:`ProgressReporter` passes on at most one update per ``interval`` seconds,
plus the first and the last, so a listener (the CLI's progress bar) and the telemetry
see a bounded stream. Updates that cross a quarter of the total (25, 50, 75 %) are
marked ``milestone``: those, and only those, become span events on the module's span.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["ModuleProgress", "ProgressListener", "ProgressReporter", "StreamListener", "progress_stream"]

#: Fractions of the total whose crossing is a milestone (a span event).
MILESTONES: Final = (0.25, 0.5, 0.75)
DEFAULT_INTERVAL: Final = 0.2


@dataclass(frozen=True, slots=True)
class ModuleProgress:
    """One progress update of one module of one job."""

    job_id: str
    module: str
    #: Units done so far (files, for the built-in modules).
    done: int
    #: Units in all, when known.
    total: int | None
    #: The module has finished (any outcome): the last update for it.
    final: bool = False
    #: This update crossed 25, 50 or 75 % of the total.
    milestone: bool = False


ProgressListener = Callable[[ModuleProgress], None]


class ProgressReporter:
    """Throttles one module's reports and hands them to ``deliver`` (thread-safe)."""

    def __init__(
        self,
        job_id: str,
        module: str,
        deliver: Callable[[ModuleProgress], None],
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job_id, self._module, self._deliver = job_id, module, deliver
        self._interval, self._clock = interval, clock
        self._lock = threading.Lock()
        self._last_sent: float | None = None
        self._milestones_passed = 0
        self._finished = False
        self.latest: tuple[int, int | None] | None = None

    def report(self, done: int, total: int | None) -> None:
        if done < 0 or (total is not None and total < 0):
            raise ValueError("progress counts are never negative")
        with self._lock:
            if self._finished:
                return  # after the final update (a module abandoned, still running): nobody listens
            self.latest = (done, total)
            milestone = False
            if total:
                passed = sum(1 for fraction in MILESTONES if done >= fraction * total)
                if passed > self._milestones_passed:
                    self._milestones_passed, milestone = passed, True
            now = self._clock()
            complete = total is not None and done >= total
            due = self._last_sent is None or now - self._last_sent >= self._interval
            if not (due or milestone or complete):
                return
            self._last_sent = now
        self._deliver(ModuleProgress(self._job_id, self._module, done, total, milestone=milestone))

    def finish(self) -> None:
        """The final update (the module has finished), with the last counts reported."""
        with self._lock:
            self._finished = True
            done, total = self.latest or (0, None)
        self._deliver(ModuleProgress(self._job_id, self._module, done, total, final=True))


class StreamListener:
    """A listener feeding a memory stream; :meth:`close` ends the stream for its reader."""

    def __init__(self, send: MemoryObjectSendStream[ModuleProgress]) -> None:
        self._send = send

    def __call__(self, update: ModuleProgress) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(update)

    def close(self) -> None:
        self._send.close()


def progress_stream(max_buffer: int = 1024) -> tuple[StreamListener, MemoryObjectReceiveStream[ModuleProgress]]:
    """A listener and the stream it feeds, for a consumer that prefers ``async for``
    (a progress bar). The listener never blocks a job: while the consumer is more than
    ``max_buffer`` updates behind, updates are dropped (each one supersedes the last).
    Close the listener when done: the consumer's ``async for`` then ends."""
    send, receive = anyio.create_memory_object_stream[ModuleProgress](max_buffer if max_buffer else math.inf)
    return StreamListener(send), receive
