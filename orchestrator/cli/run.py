"""``orchestrator run``: create one job and run it in this process, as a worker would
(leased, heartbeat, cancellable from any process), then print its result.

Ctrl-C (or SIGTERM) cancels the job cleanly: its modules are cancelled and it ends
Cancelled with a reason naming the interrupt; the command exits 130 (143). A second one
exits at once, saying that the job stays Running until its lease expires and a worker's
reaper recovers it.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, TextIO, cast

import anyio
from rich.live import Live
from rich.text import Text

from orchestrator.cli import render
from orchestrator.cli.inputs import flag_error, request_from_args
from orchestrator.cli.main import Context, exit_code, print_json, with_app
from orchestrator.domain import IllegalTransition, InvalidRequest, Job, JobStatus, OrchestratorError, QueueError
from orchestrator.modules.progress import ModuleProgress
from orchestrator.serialization import job_json, timestamp
from orchestrator.usecases.create import StartOn
from orchestrator.usecases.execute import CancelKind

if TYPE_CHECKING:
    from orchestrator.bootstrap import App
    from orchestrator.job_queue import Worker

__all__ = ["Interrupts", "Progress", "cancel_here", "create_job", "run"]


class Interrupts:
    """SIGINT/SIGTERM while ``run`` runs: the first cancels the job, the second exits."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._cancel: Callable[[str], Awaitable[None]] | None = None
        self._job_id: str | None = None
        #: The first interrupt asked for the job's cancellation (it may have ended since).
        self._cancel_sent = False

    @property
    def reason(self) -> str:
        name = self.signal.name if self.signal else "interrupt"
        return f"interrupted ({name}) while running in `orchestrator run`"

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal) if self.signal else 130

    async def watch(self) -> None:
        # The cancellation runs beside the loop: it writes to the store, which may be slow
        # to answer (a full disk, a lock held for good), and a second interrupt must still
        # exit at once.
        async with anyio.create_task_group() as cancelling:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    if self.signal is None:
                        self.signal = signal.Signals(signum)
                        render.err_console.print(
                            f"{self.signal.name}: cancelling job {self._job_id or '(being created)'}; "
                            "press Ctrl-C again to exit at once",
                            style="yellow",
                        )
                        if self._cancel is not None:
                            self._cancel_sent = True
                            cancelling.start_soon(self._send_cancel, self._cancel)
                    else:
                        self._force_exit()

    async def _send_cancel(self, cancel: Callable[[str], Awaitable[None]]) -> None:
        await cancel(self.reason)

    async def on_job(self, job_id: str, cancel: Callable[[str], Awaitable[None]]) -> None:
        """The job exists and can be cancelled with ``cancel(reason)``; an interrupt that
        came while it was being created cancels it now."""
        self._job_id, self._cancel = job_id, cancel
        if self.signal is not None:
            self._cancel_sent = True
            await cancel(self.reason)

    def _force_exit(self) -> None:
        if self._job_id is None:
            where = "no job was created"
        elif self._cancel_sent:
            where = (
                f"job {self._job_id} was being cancelled: if it had not ended yet, "
                "it stays Running until its lease expires"
            )
        else:
            where = f"job {self._job_id} stays Running until its lease expires"
        sys.stderr.write(
            f"orchestrator: error: interrupted again: exiting at once; {where} "
            "(then a worker's reaper recovers it, or `orchestrator cancel` cancels it)\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(self.exit_code)


async def create_job(app: App, ctx: Context, *, start: StartOn | None = None) -> Job:
    """Create the job the ``run``/``submit`` flags describe; errors name the flags."""
    request = request_from_args(ctx.args)
    try:
        job = await app.create.execute(request, start=start)
    except InvalidRequest as exc:
        raise flag_error(exc) from None
    if ctx.args.project_id is None and not ctx.args.json:
        render.err_console.print(
            f"project id {job.project_id!r} (from the folder name; --project-id to choose another)", style="dim"
        )
    return job


async def run(ctx: Context) -> int:
    request_from_args(ctx.args)  # flag errors before the store is opened
    interrupts = Interrupts()

    async def go(app: App) -> int:
        async with anyio.create_task_group() as signals:
            signals.start_soon(interrupts.watch)
            with _modules_write_to_stderr():
                job = await _run_here(app, ctx, interrupts)
            signals.cancel_scope.cancel()
        if ctx.args.json:
            print_json(job_json(job))
        else:
            render.job_panel(job)
        if interrupts.signal is not None and job.status is JobStatus.CANCELLED:
            return interrupts.exit_code
        return exit_code(job)

    return await with_app(ctx, go)


@contextlib.contextmanager
def _modules_write_to_stderr() -> Iterator[None]:
    """While the job runs here, what its modules print (``print``, a C library, a child
    process) goes to stderr: stdout carries the result alone, so ``run --json`` stays
    one JSON document. Python's ``sys.stdout`` is swapped for a writer of its own, which
    drops what a gone reader of stderr cannot take (a module's print must not fail, nor
    its text be left in stdout's buffer ahead of the result)."""
    original = sys.stdout
    if original is None:  # no stdout at all (`run >&-`): nothing to keep apart
        yield
        return
    with contextlib.suppress(OSError, ValueError):
        original.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)  # C code and child processes
        quiet = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="backslashreplace", closefd=True)
    except OSError:  # no stdout or stderr to move: nothing to keep apart
        yield
        return
    sys.stdout = cast(TextIO, _Forgiving(quiet))
    try:
        yield
    finally:
        sys.stdout = original
        with contextlib.suppress(OSError, ValueError):
            quiet.close()
        os.dup2(saved, 1)
        os.close(saved)


class _Forgiving(io.TextIOBase):
    """A text stream onto ``target`` that drops what cannot be written (a reader gone)."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            self._target.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._target.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._target.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> BinaryIO:
        return self._target.buffer


async def _run_here(app: App, ctx: Context, interrupts: Interrupts) -> Job:
    """Create the job already claimed by a worker of this process and run it there;
    returns it terminal. It is never Queued, so no other worker can claim it."""
    worker = app.worker(concurrency=1)
    # Created before the worker starts: a request the use case refuses (a bad source...)
    # ends the command before anything runs, with nothing to cancel mid-query.
    job = await create_job(app, ctx, start=StartOn(worker.worker_id, worker.config.lease_seconds))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: worker.run(claim=False))
        if not ctx.args.json:
            render.err_console.print(f"job {job.id} running here (trace {job.trace.trace_id})", style="dim")
        await worker.adopt(job)
        control = worker.in_flight.get(job.id)  # None only if it already ended
        await interrupts.on_job(job.id, lambda reason: cancel_here(app, worker, job.id, reason))
        progress = Progress(job) if render.err_console.is_terminal else None
        remove = app.execute.add_progress_listener(progress.update) if progress else None
        try:
            async with anyio.create_task_group() as shown:
                if progress is not None:
                    shown.start_soon(progress.show)
                # The worker here ends the job whatever happens (its outcome written, a
                # cancellation seen, the job taken by a reaper elsewhere) or gives it up:
                # wait for that, not for the store (whose reads may queue behind writes
                # that cannot finish: a full disk, a lock held for good).
                while control is not None and not control.ended:  # noqa: ASYNC110 - a flag the worker sets
                    await anyio.sleep(0.05)
                if control is not None and control.left is not None:
                    raise _not_finished_here(job, control.left)
                job = await app.store.get(job.id)
                if not job.status.terminal:
                    raise _not_finished_here(job, None)
                shown.cancel_scope.cancel()
        finally:
            if remove is not None:
                remove()
        worker.stop()
    return job


def _not_finished_here(job: Job, left: OrchestratorError | None) -> QueueError:
    """The error of a ``run`` whose worker let its job go unfinished."""
    if left is None:  # it moved on without this process (recovered by another worker's reaper)
        return QueueError(
            f"job {job.id} was taken from this process (it is {job.status}, reason {job.reason}): "
            f"`orchestrator status {job.id}` follows it",
            job_id=job.id,
        )
    # Its outcome was not written: it is Running, leased to this process, in the store.
    return QueueError(
        f"job {job.id} could not be finished here: {left.message}. It stays running until its lease "
        f"runs out, then a worker recovers it (`orchestrator worker`), or `orchestrator cancel {job.id}` "
        "cancels it",
        job_id=job.id,
    )


async def cancel_here(app: App, worker: Worker, job_id: str, reason: str) -> None:
    """Record who cancelled (the history's cancellation request), then stop the modules
    at once rather than at the worker's next poll. An interrupt that comes as the job
    finishes finds nothing to cancel, and says so."""
    from orchestrator.cli.commands import requester

    job: Job | None = None
    try:
        job = await app.store.get(job_id)
        if not job.status.terminal:
            await app.workflow.cancel(job_id, reason=reason, requested_by=requester())
    except IllegalTransition:
        job = await app.store.get(job_id)  # it finished meanwhile
    except OrchestratorError as exc:  # not recorded; its modules are still stopped below
        render.err_console.print(f"could not cancel job {job_id}: {exc.message}", style="red")
    if job is not None and job.status.terminal:
        finished = f" at {timestamp(job.finished_ns)}" if job.finished_ns else ""
        render.err_console.print(f"job {job_id} already {job.status}{finished}: nothing to cancel", style="yellow")
        return
    control = worker.in_flight.get(job_id)
    if control is not None:
        control.cancel(CancelKind.USER, reason)


class Progress:
    """A long ``run`` on a terminal: modules running and done, files scanned, elapsed
    time (on stderr, erased at the end; nothing when stderr is not a terminal)."""

    #: Shown only for runs longer than this: a quick run prints its result and nothing else.
    DELAY_S = 0.5

    def __init__(self, job: Job) -> None:
        self.job = job
        self.started = time.monotonic()
        self.modules: dict[str, ModuleProgress | None] = dict.fromkeys(job.modules)

    def update(self, update: ModuleProgress) -> None:
        if update.job_id == self.job.id and update.module in self.modules:
            self.modules[update.module] = update

    async def show(self) -> None:
        await anyio.sleep(self.DELAY_S)
        with Live(self, console=render.err_console, refresh_per_second=4, transient=True):
            await anyio.sleep_forever()

    def __rich__(self) -> Text:
        done = sum(1 for p in self.modules.values() if p is not None and p.final)
        text = Text(f"job {self.job.id}  {time.monotonic() - self.started:5.1f} s  ", style="dim")
        text.append(f"modules {done}/{len(self.modules)} done", style="bold")
        width = max(len(name) for name in self.modules) if self.modules else 0
        for name, p in self.modules.items():
            # A module that reports no progress is only known to be done at its end.
            state = "done" if p is not None and p.final else ("running" if p is not None else "...")
            text.append(f"\n  {name:<{width}}  {state:<7}", style="green" if state == "done" else "")
            if p is not None and (p.done or p.total):
                total = f"/{p.total:,}" if p.total is not None else ""
                text.append(f"  {p.done:,}{total} files", style="dim")
        return text
