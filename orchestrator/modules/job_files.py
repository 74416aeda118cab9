"""One walk and one read per file per job, shared by all the job's modules.

:class:`JobFiles` belongs to one job. The first module that asks for the index starts
the walk (in a daemon thread); the others wait for the same walk. A module that scans
file contents subscribes a :class:`~orchestrator.modules.scan.FileAnalyzer`; the
subscriptions of all modules share **one pass**: the index is cut into batches, and
each batch goes to the process pool with every analyzer that wants any of its files,
so each file is opened and read once for all of them.

Modules started together (the default: a job's modules start at once) subscribe
before the first batch leaves, so they all share every batch. A module that
subscribes later (a job whose ``concurrency`` makes modules wait for each other) gets
the batches still to come, plus its own catch-up batches for those already sent:
those files are read a second time, and counted (``rereads``).

Cancellation: a module that leaves (its timeout, a fail-fast cancel) is dropped from
the batches still to come, and a batch in flight that no module wants any more is
cancelled, which kills its worker process. Cancelling the job cancels everything.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from orchestrator.modules.index import FileEntry, FileIndex, IndexConfig, WalkCancelled, WalkStats, build_index
from orchestrator.modules.runners import BatchRunner, ThreadRunner, run_in_daemon_thread
from orchestrator.modules.scan import AnalyzerOutcome, BatchRequest, BatchResult, FileAnalyzer, batch_ranges

__all__ = ["AnalyzerFailed", "JobFiles", "ScanResult"]

R = TypeVar("R")

#: A batch is at most this many files or bytes: small enough that progress moves and a
#: cancelled batch loses little, large enough that per-batch overhead stays small.
BATCH_FILES: Final = 256
BATCH_BYTES: Final = 2_000_000
_JOIN_CHECKPOINTS: Final = 3
#: How often the files found by a walk still running are reported (``when_walking``).
WALK_REPORT_SECONDS: Final = 0.5
#: At most this many files for a tree scanned in this process (see ``inline_bytes``).
INLINE_FILES: Final = 1_000
#: How often a running walk is checked for having outgrown in-process scanning (then
#: the worker processes start while it walks, not when the first batch is ready).
WARM_CHECK_SECONDS: Final = 0.02


class AnalyzerFailed(Exception):
    """An analyzer raised on a file (its traceback is the message), or its batch died."""


@dataclass
class ScanResult(Generic[R]):
    """What an analyzer found, in index order, and what its module's walk left out."""

    #: (entry, finding) for each selected file whose finding was not None.
    results: list[tuple[FileEntry, R]]
    #: Selected files.
    files: int
    #: Selected files handed to ``analyze`` (the others were skipped, see ``stats``).
    analyzed: int
    #: Walk statistics for this module: the index's, plus its own read skips.
    stats: WalkStats
    #: Files this module missed from the shared pass and read again on its own.
    rereads: int = 0


@dataclass(eq=False)
class _Subscription:
    analyzer: FileAnalyzer[Any]
    #: Position in the index -> selected.
    selected: list[bool]
    total: int
    on_progress: Callable[[int, int], None] | None
    done: int = 0
    analyzed: int = 0
    found: list[tuple[int, Any]] = field(default_factory=list)
    skipped: WalkStats = field(default_factory=WalkStats)
    rereads: int = 0
    error: str | None = None
    active: bool = True
    finished: anyio.Event = field(default_factory=anyio.Event)

    def count(self, span: range) -> int:
        return sum(1 for position in span if self.selected[position])


@dataclass(eq=False)
class _Batch:
    span: range
    subscribers: set[_Subscription]
    scope: anyio.CancelScope | None = None
    sent: bool = False


class JobFiles:
    """The index and the shared pass of one job. Use as ``async with JobFiles(...)``."""

    def __init__(
        self,
        source: Path,
        config: IndexConfig | None = None,
        runner: BatchRunner | None = None,
        *,
        batch_files: int = BATCH_FILES,
        batch_bytes: int = BATCH_BYTES,
        inline_bytes: int = 0,
        resolved: bool = False,
        walk: Callable[..., FileIndex] = build_index,
        walk_report_seconds: float = WALK_REPORT_SECONDS,
        warm_check_seconds: float = WARM_CHECK_SECONDS,
    ) -> None:
        self.source = source
        #: How the tree is walked (``build_index``; tests put a gate in it).
        self._build = walk
        self._walk_report_seconds = walk_report_seconds
        self._warm_check_seconds = warm_check_seconds
        #: Counted into by the walk as it goes.
        self.walk_stats = WalkStats()
        self._on_walking: list[Callable[[int], None]] = []
        #: ``source`` is a job's, stored as a realpath: refuse it if it now leads elsewhere.
        self._resolved = resolved
        self.config = config or IndexConfig()
        self.runner: BatchRunner = runner or ThreadRunner()
        #: A tree of at most this many bytes (and INLINE_FILES files) is scanned in a daemon
        #: thread of this process: starting worker processes would cost more than it saves.
        self._inline_bytes = inline_bytes
        self._batch_files, self._batch_bytes = batch_files, batch_bytes
        self._index: FileIndex | None = None
        self._index_error: BaseException | None = None
        self._walked = anyio.Event()
        self._walk_started = False
        #: Set when the job leaves: the walk thread reads it between entries. A plain flag
        #: (one attribute store, seen by the other thread under the GIL) rather than a
        #: ``threading.Event``, whose lock and condition every job paid for, walked or not.
        self._walk_stopped = False
        self._batches: list[_Batch] | None = None
        self._pending: deque[_Batch] = deque()
        self._work = anyio.Event()
        self._dispatching = False
        self._tg: anyio.abc.TaskGroup | None = None
        #: Tasks started in ``_tg`` that have not ended (the walk, the warm-up, batches).
        self._tasks = 0
        self._flying: set[_Batch] = set()
        self._on_walked: list[Callable[[FileIndex], None]] = []
        #: Names of the modules that subscribed to the shared pass.
        self.members: set[str] = set()
        #: Files opened by the pool for this job (reported by the batches themselves).
        self.opened = 0
        #: Files read a second time for a module that subscribed late.
        self.rereads = 0

    async def __aenter__(self) -> JobFiles:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        # The body's own exception (if any) propagates unchanged: it is not handed to the
        # task group, which would wrap it in an ExceptionGroup.
        assert self._tg is not None
        self._walk_stopped = True
        if self._tasks:  # (cancelling a scope with nothing left in it still costs a round of the loop)
            self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    def _stop_walk(self) -> None:
        self._walk_stopped = True

    def _walk_cancelled(self) -> bool:
        return self._walk_stopped

    def _start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """``fn(*args)`` in the job's task group, counted while it runs."""
        assert self._tg is not None, "use JobFiles as an async context manager"
        self._tasks += 1
        self._tg.start_soon(self._counted, fn, args, name=name)

    async def _counted(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        finally:
            self._tasks -= 1

    # -- the index --------------------------------------------------------------------

    def start_walk(self) -> None:
        """Start the walk now (the executor does, to size budgets) without waiting for it."""
        if not self._walk_started:
            self._walk_started = True
            self._start(self._walk, name="job-files:walk")

    def when_walking(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(files found so far)`` (in the event loop) every
        ``walk_report_seconds`` while the walk runs."""
        self._on_walking.append(callback)

    def when_walked(self, callback: Callable[[FileIndex], None]) -> None:
        """Call ``callback(index)`` (in the event loop) once the walk has succeeded."""
        if self._index is not None:
            callback(self._index)
        else:
            self._on_walked.append(callback)

    @property
    def walked(self) -> FileIndex | None:
        """The index if the walk has finished (None while it runs or when it failed)."""
        return self._index

    async def index(self) -> FileIndex:
        """The job's index, walked once (the first caller starts the walk)."""
        self.start_walk()
        await self._walked.wait()
        if self._index_error is not None:
            error = self._index_error
            raise type(error)(*error.args)  # a fresh one per caller: tracebacks stay their own
        assert self._index is not None
        return self._index

    async def _walk(self) -> None:
        # Checked while the walk runs (a walk of a small tree ends before the first check):
        # the files found so far for ``when_walking``, and whether the tree has outgrown
        # in-process scanning, in which case the worker processes start now, overlapping
        # the rest of the walk. (A tree of few large files is only known to be large once
        # walked: its first batch starts them.)
        reported = anyio.current_time()
        warming = False

        def check() -> None:
            nonlocal reported, warming
            if not warming and self.walk_stats.files_seen > INLINE_FILES:
                warming = True
                self._start(self.runner.warm, name="job-files:warm")
            now = anyio.current_time()
            if self._on_walking and now - reported >= self._walk_report_seconds:
                reported = now
                for callback in self._on_walking:
                    callback(self.walk_stats.files_seen)

        try:
            self._index = await run_in_daemon_thread(
                functools.partial(
                    self._build, cancelled=self._walk_cancelled, resolved=self._resolved, stats=self.walk_stats
                ),
                self.source,
                self.config,
                name="job-files-walk",
                on_cancel=self._stop_walk,
                every=min(self._warm_check_seconds, self._walk_report_seconds),
                on_tick=check,
            )
        except WalkCancelled:
            return
        except Exception as exc:  # noqa: BLE001 - handed to every module that asks
            self._index_error = exc
        index = self._index
        if index is not None and index.total_bytes <= self._inline_bytes and len(index) <= INLINE_FILES:
            self.runner = ThreadRunner()
        self._walked.set()
        if self._index is not None:
            for callback in self._on_walked:
                callback(self._index)

    # -- the shared pass --------------------------------------------------------------

    async def scan(
        self,
        analyzer: FileAnalyzer[R],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        module: str | None = None,
    ) -> ScanResult[R]:
        """Run ``analyzer`` over the files it selects, sharing reads with the job's other scans."""
        if module is not None:
            self.members.add(module)
        index = await self.index()
        selected = [analyzer.select(entry) for entry in index]
        subscription = _Subscription(analyzer, selected, sum(selected), on_progress)
        self._subscribe(index, subscription)
        if subscription.total == 0:
            subscription.finished.set()
        try:
            await subscription.finished.wait()
        finally:
            self._leave(subscription)
        if subscription.error is not None:
            raise AnalyzerFailed(subscription.error)
        subscription.found.sort(key=lambda item: item[0])
        return ScanResult(
            [(index[position], found) for position, found in subscription.found],
            subscription.total,
            subscription.analyzed,
            index.stats.add(subscription.skipped),
            subscription.rereads,
        )

    def _subscribe(self, index: FileIndex, subscription: _Subscription) -> None:
        if self._batches is None:
            sizes = [min(entry.size, self.config.max_file_bytes) for entry in index]
            spans = batch_ranges(sizes, max_files=self._batch_files, max_bytes=self._batch_bytes)
            self._batches = [_Batch(span, set()) for span in spans]
            self._pending.extend(self._batches)
        for batch in self._batches:
            if not subscription.count(batch.span):
                continue
            if batch.sent:
                # Missed it: a catch-up batch of its own (those files are read again).
                catch_up = _Batch(batch.span, {subscription})
                subscription.rereads += subscription.count(batch.span)
                self._pending.append(catch_up)
            else:
                batch.subscribers.add(subscription)
        self.rereads += subscription.rereads
        if not self._dispatching:
            self._dispatching = True
            self._start(self._dispatch, name="job-files:dispatch")
        self._work.set()

    def _leave(self, subscription: _Subscription) -> None:
        subscription.active = False
        for batch in list(self._flying):
            if batch.scope is not None and not any(s.active for s in batch.subscribers):
                batch.scope.cancel()  # nobody wants it any more: kill its worker

    async def _dispatch(self) -> None:
        # Modules started together wake from the walk together; a few checkpoints let
        # those that await once more before subscribing still join the first batch.
        for _ in range(_JOIN_CHECKPOINTS):
            await anyio.lowlevel.checkpoint()
        slots = anyio.Semaphore(max(1, self.runner.size))
        while True:
            while not self._pending:
                self._work = anyio.Event()
                await self._work.wait()
            batch = self._pending.popleft()
            if not any(s.active for s in batch.subscribers):
                continue
            await slots.acquire()
            batch.subscribers = {s for s in batch.subscribers if s.active}
            if not batch.subscribers:
                slots.release()
                continue
            batch.sent = True
            self._flying.add(batch)
            self._start(self._run, batch, slots, name="job-files:batch")

    async def _run(self, batch: _Batch, slots: anyio.Semaphore) -> None:
        try:
            index = self._index
            assert index is not None
            subscribers = sorted(batch.subscribers, key=id)
            analyzers = tuple(s.analyzer for s in subscribers)
            entries: list[FileEntry] = []
            wants: list[tuple[int, ...]] = []
            positions: list[int] = []
            for position in batch.span:
                wanted = tuple(i for i, s in enumerate(subscribers) if s.selected[position])
                if wanted:
                    entries.append(index[position])
                    wants.append(wanted)
                    positions.append(position)
            request = BatchRequest(tuple(entries), tuple(wants), analyzers, self.config.max_file_bytes)
            with anyio.CancelScope() as batch.scope:
                result = await self._run_with_retry(request, subscribers, positions, batch.span)
            if result is None or batch.scope.cancelled_caught:
                return
            self.opened += result.opened
            for i, subscription in enumerate(subscribers):
                self._deliver(subscription, result.outcomes[i], positions, batch.span)
        finally:
            self._flying.discard(batch)
            slots.release()

    async def _run_with_retry(
        self, request: BatchRequest, subscribers: list[_Subscription], positions: list[int], span: range
    ) -> BatchResult | None:
        """The batch's result, or None when it failed (its modules are told why).

        A worker can die of something else than this batch (the OOM killer chose it), so
        a batch gets a second try in a fresh worker. If it dies again and several modules
        share it, each module's part runs alone, so only the module whose analyzer kills
        its worker fails."""
        for attempt in (1, 2):
            try:
                return await self.runner.run(request)
            except Exception as exc:  # noqa: BLE001 - a dead worker fails the batch, not the job
                failure = exc
            if attempt == 2 and len(subscribers) > 1:
                await self._run_apart(request, subscribers, positions, span)
                return None
        for subscription in subscribers:
            self._fail(subscription, f"the worker process running its batch died twice: {failure}")
        return None

    async def _run_apart(
        self, request: BatchRequest, subscribers: list[_Subscription], positions: list[int], span: range
    ) -> None:
        for index, subscription in enumerate(subscribers):
            keep = [i for i, wants in enumerate(request.wants) if index in wants]
            alone = BatchRequest(
                tuple(request.entries[i] for i in keep),
                tuple((0,) for _ in keep),
                (request.analyzers[index],),
                request.max_file_bytes,
            )
            try:
                result = await self.runner.run(alone)
            except Exception as exc:  # noqa: BLE001 - this module's analyzer kills its worker
                self._fail(subscription, f"the worker process running its batch died twice: {exc}")
                continue
            self.rereads += len(keep)
            self.opened += result.opened
            self._deliver(subscription, result.outcomes[0], [positions[i] for i in keep], span)

    def _deliver(
        self, subscription: _Subscription, outcome: AnalyzerOutcome, positions: list[int], span: range
    ) -> None:
        if not subscription.active:
            return
        if outcome.error is not None:
            self._fail(subscription, outcome.error)
            return
        subscription.found.extend((positions[at], found) for at, found in outcome.results)
        subscription.analyzed += outcome.analyzed
        skipped = subscription.skipped
        skipped.skipped_binary += outcome.skipped_binary
        skipped.skipped_large += outcome.skipped_large
        skipped.skipped_unreadable += outcome.skipped_unreadable
        subscription.done += subscription.count(span)
        if subscription.on_progress is not None:
            subscription.on_progress(subscription.done, subscription.total)
        if subscription.done >= subscription.total:
            subscription.finished.set()

    @staticmethod
    def _fail(subscription: _Subscription, error: str) -> None:
        if subscription.error is None:
            subscription.error = error
        subscription.finished.set()
