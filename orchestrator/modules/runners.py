"""Where module work runs: daemon threads for blocking calls, a process pool for CPU.

**Daemon threads.** ``ModuleContext.run_sync`` used anyio's worker threads. Those are
not daemon threads, so the interpreter joins them at exit (``threading._shutdown``):
a module blocked for good in a read (``/proc/kmsg``, a FIFO, a dead NFS server) kept
the process alive after ``worker``/``serve`` had finished shutting down, and only
SIGKILL stopped it. A Python thread cannot be killed; it can only be abandoned, and
only a daemon thread can be abandoned at exit. :func:`run_in_daemon_thread` runs the
call in one, bounded by anyio's default thread limiter as before. The threads are kept
for the next call (a few seconds) rather than started per call: a job's walk of a small
tree cost less than the thread it started.

**Processes.** Parsing and regular expressions hold the GIL, so threads do not add
cores. :class:`ProcessRunner` runs batches in a :class:`~orchestrator.modules.pool.ProcessPool`
(worker processes reused across jobs, at most one per core, killed when the awaiting
task is cancelled, all killed and reaped by :meth:`ProcessRunner.aclose`).
:class:`ThreadRunner` runs them in a daemon thread instead (no processes:
``ORCHESTRATOR_ANALYSIS_PROCESSES=0``, and modules run outside a job, as in unit
tests); a cancelled batch stops after its current file.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from orchestrator.modules.pool import ProcessPool
from orchestrator.modules.scan import BatchRequest, BatchResult, run_batch, run_batch_read_ahead

__all__ = ["BatchRunner", "ProcessRunner", "ThreadRunner", "leave_blocked_threads", "run_in_daemon_thread"]

T = TypeVar("T")


class _DaemonThreads:
    """Daemon threads kept for the next call instead of one started per call.

    Starting a thread costs more than a small call it runs (a job's walk of a one-file
    tree), so a thread that finished its call waits ``idle_seconds`` for another before it
    ends. Each idle thread has its own hand-off queue: a caller takes one idle thread (the
    latest, whose stack is warm) or starts a new one, so a call never waits for a busy
    thread, and a thread blocked for good in its call is simply never idle again. An idle
    thread is named ``IDLE_NAME``; a thread takes its call's name while it runs it.
    """

    IDLE_NAME: Final = "orchestrator-idle"

    def __init__(self, idle_seconds: float = 10.0) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []
        if hasattr(os, "register_at_fork"):
            # A forked child has none of these threads: its callers must start their own.
            # (Held weakly: the hook outlives any instance but the module's own.)
            this = weakref.ref(self)

            def forget() -> None:
                threads = this()
                if threads is not None:
                    threads._forget()

            os.register_at_fork(after_in_child=forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._idle = []

    @property
    def idle(self) -> int:
        """How many threads wait for a call."""
        with self._lock:
            return len(self._idle)

    def run(self, call: Callable[[], None], name: str, then: Callable[[], None] | None = None) -> None:
        """Run ``call()`` in an idle thread or a new one, then ``then()`` once the thread
        waits for calls again (neither may raise): a caller told by ``then`` that its call
        is done finds the thread idle for its next call."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            slot = self._new_slot()
            # The call goes through the slot, not the thread's arguments, which the thread
            # would keep (and with them the call's result) for as long as it lives.
            threading.Thread(target=self._serve, args=(slot,), name=name, daemon=True).start()
        slot.put((call, then, name))

    @staticmethod
    def _new_slot() -> _Slot:
        return queue.SimpleQueue()

    def _serve(self, slot: _Slot) -> None:
        thread = threading.current_thread()
        call, then, thread.name = slot.get()
        while True:
            try:
                call()
            except BaseException:
                if then is not None:  # a call that broke its promise (out of memory): its caller is still told
                    then()
                raise
            call = _nothing  # nothing of the finished call is kept while idle
            thread.name = self.IDLE_NAME
            with self._lock:
                self._idle.append(slot)
            if then is not None:
                then()
                then = None
            try:
                call, then, thread.name = slot.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if slot in self._idle:
                        self._idle.remove(slot)
                        return
                # A caller took this thread just as the wait timed out: its call is on the way.
                call, then, thread.name = slot.get()


def _nothing() -> None:
    return None


#: An idle thread's hand-off queue: (call, then, name).
_Slot = queue.SimpleQueue[tuple[Callable[[], None], "Callable[[], None] | None", str]]

_THREADS = _DaemonThreads()


async def run_in_daemon_thread(
    fn: Callable[..., T],
    *args: Any,
    name: str = "module",
    on_cancel: Callable[[], None] | None = None,
    every: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> T:
    """``fn(*args)`` in a daemon thread (a kept one, or a new one), with the caller's
    context variables.

    If the awaiting task is cancelled, ``on_cancel()`` is called (to ask ``fn`` to stop)
    and the await ends at once; the thread is abandoned and never delays interpreter exit.
    With ``every``, ``on_tick()`` is called in the event loop each ``every`` seconds
    while ``fn`` runs (never for a call that ends sooner: no task, no timer left behind).
    """
    finished = anyio.Event()
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()
    notify = _notifier(finished)

    def target() -> None:
        try:
            outcome.append((True, context.run(fn, *args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome.append((False, exc))

    def done() -> None:
        # The event loop may be gone (the process is exiting): then nobody is waiting.
        with contextlib.suppress(Exception):
            notify()

    async with anyio.to_thread.current_default_thread_limiter():
        _THREADS.run(target, name, done)
        try:
            if every is None or on_tick is None:
                await finished.wait()
            else:
                while True:
                    with anyio.move_on_after(every):
                        await finished.wait()
                    if finished.is_set():
                        break
                    on_tick()
        except BaseException:
            if on_cancel is not None:
                on_cancel()
            raise
    if not outcome:
        raise RuntimeError(f"the {name} thread ended without a result")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _notifier(finished: anyio.Event) -> Callable[[], None]:
    """What a thread calls to set ``finished`` in the awaiting task's event loop.

    On asyncio the call is queued to the loop and the thread goes on at once (anyio's
    ``from_thread.run_sync`` would hold the thread until the loop has run it); on another
    backend, anyio's way.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        token = anyio.lowlevel.current_token()
        return lambda: anyio.from_thread.run_sync(finished.set, token=token)

    def notify() -> None:
        loop.call_soon_threadsafe(finished.set)

    return notify


class BatchRunner(Protocol):
    #: Batches that usefully run at once (one per core for processes).
    size: int

    async def run(self, request: BatchRequest) -> BatchResult: ...

    async def warm(self) -> None:
        """Start what :meth:`run` needs (worker processes) ahead of the first batch."""

    async def aclose(self) -> None:
        """Stop everything the runner started."""


class ThreadRunner:
    """Batches in daemon threads of this process (one at a time: the GIL allows no more)."""

    size = 1

    async def run(self, request: BatchRequest) -> BatchResult:
        cancel = threading.Event()
        return await run_in_daemon_thread(run_batch, request, cancel, name="module-batch", on_cancel=cancel.set)

    async def warm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class ProcessRunner:
    """Batches in a pool of worker processes, at most ``size`` at once across all jobs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pool = ProcessPool(size)

    async def run(self, request: BatchRequest) -> BatchResult:
        # A cancelled job's batch is stopped by killing its worker, not awaited.
        return await self.pool.run(run_batch_read_ahead, request)

    async def warm(self) -> None:
        await self.pool.warm()

    async def aclose(self) -> None:
        await self.pool.aclose()


def leave_blocked_threads(code: int, *, wait_seconds: float = 1.0) -> int:
    """Make sure the process can exit with ``code`` even if a thread is blocked for good.

    ``context.run_sync`` uses daemon threads, but a module may start threads of its own
    (``anyio.to_thread``, ``threading.Thread``): the interpreter joins every non-daemon
    thread at exit, forever if one is stuck in a read. Called by the command line as it
    returns: just before that join, non-daemon threads get ``wait_seconds`` to finish;
    if some are still running, their names go to stderr and the process exits with
    ``code`` at once (everything else, telemetry included, was already shut down).
    """

    def before_join() -> None:
        deadline = time.monotonic() + wait_seconds
        for thread in _others():
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in _others() if thread.is_alive()]
        if stuck:
            print(
                f"orchestrator: note: leaving {len(stuck)} blocked thread(s) behind at exit: {', '.join(stuck)}",
                file=sys.stderr,
            )
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    register = getattr(threading, "_register_atexit", None)  # runs before the join (CPython >= 3.9)
    if register is not None:
        register(before_join)
    return code


def _others() -> list[threading.Thread]:
    main = threading.main_thread()
    return [thread for thread in threading.enumerate() if thread is not main and not thread.daemon]
