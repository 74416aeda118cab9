"""Where module work runs: the process pool (cancelled work killed within 1 s, nothing
left behind), a cancelled job on real worker processes, dead workers and failing
analyzers, progress on its way to listeners and spans, and a third-party module written
against the original interface."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from telemetry_helpers import TelemetryHarness, events_named, one_span

from orchestrator.bootstrap import App, open_app
from orchestrator.domain import JobStatus, ModuleOutcome
from orchestrator.modules import runners
from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext, ModuleSummary
from orchestrator.modules.builtin import SecretsModule, TodosModule
from orchestrator.modules.index import FileEntry, FileIndex, IndexConfig, WalkStats, build_index
from orchestrator.modules.job_files import INLINE_FILES, JobFiles
from orchestrator.modules.pool import BrokenWorker, ProcessPool
from orchestrator.modules.progress import progress_stream
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.modules.runners import ProcessRunner, _DaemonThreads, run_in_daemon_thread
from orchestrator.modules.scan import FileContent
from orchestrator.settings import Settings
from orchestrator.usecases import CancelKind, JobControl
from otel.vocabulary import Attr, ModuleEvent, SpanName

pytestmark = pytest.mark.anyio

#: A marker file's path: an analyzer in a worker process writes it when it starts.
MARKER_ENV = "ORCH_TEST_MARKER"


def children() -> set[int]:
    """This process's live child processes (from /proc, all threads)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def analysis_threads() -> list[str]:
    """Threads of module work still alive (the walk, batches, run_sync)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("module", "job-files"))]


async def wait_until(check: Callable[[], bool], *, timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what() if callable(what) else what
        await anyio.sleep(0.02)


# --- functions and analyzers run in worker processes (top level: picklable) -----------------


def pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def fail_with(message: str) -> None:
    raise ValueError(message)


def announce_then_block(marker: str) -> None:
    # Written whole, then renamed: the test may find the marker the moment it exists.
    partial = Path(f"{marker}.{os.getpid()}.partial")
    partial.write_text(str(os.getpid()))
    partial.replace(marker)
    time.sleep(3600)


def die() -> None:
    os._exit(7)


class BlockingAnalyzer(FileAnalyzer[int]):
    """Announces itself through a marker file, then never returns."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def analyze(self, entry: FileEntry, content: FileContent) -> int | None:
        announce_then_block(self.marker)
        return None


class DyingAnalyzer(FileAnalyzer[int]):
    def analyze(self, entry: FileEntry, content: FileContent) -> int | None:
        os._exit(9)


class RaisingAnalyzer(FileAnalyzer[int]):
    def analyze(self, entry: FileEntry, content: FileContent) -> int | None:
        if entry.name == "b.py":
            raise ZeroDivisionError("division by zero")
        return 1


class Lines(FileAnalyzer[int]):
    def analyze(self, entry: FileEntry, content: FileContent) -> int | None:
        return content.lines


class BlockingScan(BaseModule):
    name: ClassVar[str] = "blocking_scan"
    timeout: ClassVar[float] = 600.0

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await context.scan(BlockingAnalyzer(str(self.marker)))
        return {}


class DyingScan(BaseModule):
    name: ClassVar[str] = "dying_scan"
    timeout: ClassVar[float] = 60.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await context.scan(DyingAnalyzer())
        return {}


class RaisingScan(BaseModule):
    name: ClassVar[str] = "raising_scan"
    timeout: ClassVar[float] = 60.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        result = await context.scan(RaisingAnalyzer())
        return {"found": len(result.results)}


# --- the pool ---------------------------------------------------------------------------------


async def test_the_pool_runs_calls_in_other_processes_and_reuses_them() -> None:
    before = children()
    pool = ProcessPool(2)
    try:
        first = await pool.run(pid_and, 21)
        second = await pool.run(pid_and, 4)
        assert (first[1], second[1]) == (42, 8)
        assert first[0] != os.getpid()
        assert first[0] == second[0]  # one idle worker, reused
        with pytest.raises(ValueError, match="bad input"):
            await pool.run(fail_with, "bad input")
        assert (await pool.run(pid_and, 1))[0] == first[0]  # a raising call keeps its worker
        assert set(pool.pids) <= children() - before
    finally:
        await pool.aclose()
    assert children() == before
    assert pool.pids == []


async def test_a_cancelled_call_kills_its_worker_within_a_second(tmp_path: Path) -> None:
    before = children()
    marker = tmp_path / "started"
    pool = ProcessPool(1)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, announce_then_block, str(marker))
            await wait_until(marker.exists, timeout=60, what="the call never started")
            pid = int(marker.read_text())
            assert pid in children()
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()
        stopped_in = time.monotonic() - cancelled_at
        assert stopped_in < 1.0, f"the cancelled call took {stopped_in:.2f} s to stop"
        assert pid not in children()  # killed and reaped: no zombie either
        assert not Path(f"/proc/{pid}").exists()
        assert (await pool.run(pid_and, 1))[1] == 2  # the pool goes on with a new worker
    finally:
        await pool.aclose()
    assert children() == before


async def test_a_dead_worker_fails_the_call_not_the_pool() -> None:
    pool = ProcessPool(1)
    try:
        with pytest.raises(BrokenWorker, match="died"):
            await pool.run(die)
        assert (await pool.run(pid_and, 3))[1] == 6
    finally:
        await pool.aclose()


async def test_the_worker_processes_start_while_a_large_tree_is_still_walked(tmp_path: Path) -> None:
    """Past INLINE_FILES files the tree will be scanned by the pool: its processes start
    during the walk (held at a gate here), not once the first batch is ready."""
    root = tmp_path / "src"
    for index in range(INLINE_FILES + 20):
        path = root / f"d{index // 100:02}" / f"f{index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    (root / "zz").mkdir()  # walked last: the gate holds the walk before it
    (root / "zz" / "last.txt").write_text("x\n")
    release = threading.Event()

    def gated_walk(source: Path, config: IndexConfig, *, cancelled: Any, stats: WalkStats, **kw: Any) -> FileIndex:
        def gate() -> bool:
            if stats.files_seen > INLINE_FILES:
                release.wait(60)
            return bool(cancelled())

        return build_index(source, config, cancelled=gate, stats=stats, **kw)

    before = children()
    runner = ProcessRunner(2)
    try:
        async with JobFiles(root, runner=runner, walk=gated_walk, warm_check_seconds=0.001) as files:
            files.start_walk()
            await wait_until(lambda: len(runner.pool.pids) == 2, timeout=60, what="the pool never started")
            assert files.walked is None  # still held at the gate
            release.set()
            with anyio.fail_after(60):
                result = await files.scan(Lines())
        assert result.files == INLINE_FILES + 21
    finally:
        release.set()
        await runner.aclose()
    assert children() == before


async def test_a_small_tree_starts_no_worker_process(tmp_path: Path) -> None:
    root = project(tmp_path / "src")
    runner = ProcessRunner(2)
    try:
        async with JobFiles(root, runner=runner, inline_bytes=1_000_000, warm_check_seconds=0.001) as files:
            result = await files.scan(Lines())
        assert result.files == 31
        assert runner.pool.pids == []
    finally:
        await runner.aclose()


async def test_leaving_the_job_files_stops_what_still_runs_and_nothing_when_all_is_done(tmp_path: Path) -> None:
    root = project(tmp_path / "src")
    async with JobFiles(root) as walked_only:
        assert len(await walked_only.index()) == 31
    assert walked_only._tasks == 0  # the walk ended: nothing was left to cancel
    assert walked_only._tg is not None
    assert not walked_only._tg.cancel_scope.cancel_called

    release = threading.Event()
    told: list[Any] = []

    def held_walk(source: Path, config: IndexConfig, *, cancelled: Any, **kw: Any) -> FileIndex:
        told.append(cancelled)
        release.wait(60)
        return build_index(source, config, cancelled=cancelled, **kw)

    try:
        with anyio.fail_after(10):  # leaving waits for nothing: the walk is told to stop, the scan task cancelled
            async with JobFiles(root, walk=held_walk) as held:
                held.start_walk()
                await wait_until(lambda: bool(told), timeout=10, what="the walk thread never started")
        assert held._tg is not None
        assert held._tg.cancel_scope.cancel_called
        assert [stop() for stop in told] == [True]  # the walk thread, still held, reads that it must stop
        async with JobFiles(root) as scanned:
            assert (await scanned.scan(Lines())).files == 31  # leaves its dispatcher waiting for work
        assert scanned._tasks == 0
    finally:
        release.set()


# --- jobs on real worker processes ------------------------------------------------------------


def project(root: Path, files: int = 30) -> Path:
    for index in range(files):
        path = root / f"pkg/m{index:03}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# TODO: {index}\n" + "x = 1\n" * 50)
    (root / "pkg/b.py").write_text("y = 2\n")
    return root


@pytest.fixture
async def app(tmp_path: Path, harness: TelemetryHarness) -> AsyncIterator[App]:
    modules = [
        BlockingScan(tmp_path / "started"),
        DyingScan(),
        RaisingScan(),
        SecretsModule(),
        TodosModule(),
    ]
    # analysis_inline_bytes=0: these trees are small, and must still go to the processes.
    settings = Settings(data_dir=tmp_path / "data", analysis_processes=2, analysis_inline_bytes=0)
    async with open_app(settings, registry=ModuleRegistry(modules), telemetry=harness.telemetry) as opened:
        yield opened


async def start(app: App, source: Path, modules: list[str]) -> Any:
    await app.create.execute({"project_id": "p", "source": str(source), "modules": modules})
    running = await app.workflow.claim("w1", lease_seconds=60)
    assert running is not None
    return running


async def test_cancelling_a_job_stops_all_its_work_within_a_second(tmp_path: Path, app: App) -> None:
    before = children()
    running = await start(app, project(tmp_path / "src"), ["blocking_scan", "todos"])
    control = JobControl()
    done = anyio.Event()
    final: list[Any] = []

    async def execute() -> None:
        final.append(await app.execute.execute(running, control=control, worker_id="w1"))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(execute)
        await wait_until((tmp_path / "started").exists, timeout=60, what="the blocking batch never started")
        busy = int((tmp_path / "started").read_text())
        assert busy in children()
        cancelled_at = time.monotonic()
        control.cancel(CancelKind.USER, "stop it")
        # The guarantee: the job's work (the worker process busy with its batch) stops
        # within a second. Recording the Cancelled status is a store write after that.
        await wait_until(lambda: busy not in children(), timeout=1.0, what="the busy worker outlived the cancel")
        stopped_in = time.monotonic() - cancelled_at
        with anyio.fail_after(30):
            await done.wait()
    assert stopped_in < 1.0, f"the job's work took {stopped_in:.2f} s to stop"
    assert final[0].status is JobStatus.CANCELLED
    assert children() - before <= set(app.execute._batch_runner().pool.pids)  # type: ignore[attr-defined]
    await app.execute.aclose()
    assert children() == before
    await wait_until(lambda: not analysis_threads(), timeout=10, what=lambda: f"left behind: {analysis_threads()}")


def panic_of(caplog: pytest.LogCaptureFixture, module: str) -> str:
    """The exception a module's panic was logged with (its reason only names the type)."""
    records = [r for r in caplog.records if r.getMessage().startswith(f"module {module} panic") and r.exc_info]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    exc_info = records[0].exc_info
    assert exc_info is not None
    return f"{type(exc_info[1]).__name__}: {exc_info[1]}"


async def test_a_worker_dying_under_an_analyzer_fails_only_that_module(
    tmp_path: Path, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(app, project(tmp_path / "src", files=3), ["dying_scan", "todos"])
    final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
    results = {result.module: result for result in final.results}
    assert results["dying_scan"].outcome is ModuleOutcome.PANIC
    assert results["dying_scan"].error_type == "AnalyzerFailed"
    logged = panic_of(caplog, "dying_scan")
    assert logged.startswith("AnalyzerFailed: the worker process running its batch died twice: worker process")
    assert logged.endswith("died (exit status 9)")  # what DyingAnalyzer's os._exit(9) said
    assert results["todos"].outcome is ModuleOutcome.OK
    assert results["todos"].summary["total"] == 3


async def test_an_analyzer_raising_is_its_modules_panic_naming_the_file(
    tmp_path: Path, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start(app, project(tmp_path / "src", files=2), ["raising_scan", "secrets"])
    final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
    results = {result.module: result for result in final.results}
    assert results["raising_scan"].outcome is ModuleOutcome.PANIC
    assert results["raising_scan"].error_type == "AnalyzerFailed"
    expected = "AnalyzerFailed: ZeroDivisionError: division by zero (analysing pkg/b.py)"
    assert panic_of(caplog, "raising_scan") == expected
    assert results["secrets"].outcome is ModuleOutcome.OK


# --- progress ---------------------------------------------------------------------------------


async def test_progress_reaches_listeners_and_a_few_span_events(
    tmp_path: Path, app: App, harness: TelemetryHarness
) -> None:
    listener, updates = progress_stream()
    remove = app.execute.add_progress_listener(listener)
    try:
        # 700 files in batches of 256: three batches, so progress moves (and is throttled).
        running = await start(app, project(tmp_path / "src", files=699), ["todos"])
        final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
    finally:
        remove()
        listener.close()
    async with updates:
        seen = [update async for update in updates]
    assert final.status is JobStatus.COMPLETED
    assert seen, "no progress reached the listener"
    assert {update.module for update in seen} == {"todos"}
    assert seen[-1].final
    assert (seen[-1].done, seen[-1].total) == (700, 700)
    dones = [update.done for update in seen if not update.final]
    assert dones == sorted(dones)
    assert len(seen) <= 5  # at most: the first, each milestone, the last (never one per file)
    span = one_span(harness.trace(final.trace.trace_id), SpanName.MODULE, **{Attr.MODULE: "todos"})
    progress_events = events_named(span, ModuleEvent.PROGRESS)
    assert 1 <= len(progress_events) <= 3
    assert span.attributes is not None
    assert (span.attributes[Attr.PROGRESS_DONE], span.attributes[Attr.PROGRESS_TOTAL]) == (700, 700)


# --- a module written against the original interface ------------------------------------------


class OldStyleModule:
    """A third-party module as the README documented it before the shared index: a plain
    class (no base class), walking ``context.source`` itself in ``context.run_sync``,
    checking ``context.check_cancelled()`` and reading ``context.options``."""

    name = "oldstyle"
    version = "0.1.0"
    expected_runtime = 5.0
    timeout = 30.0
    description = "counts lines the old way"

    async def run(self, context: Any) -> dict[str, Any]:
        suffix = context.options.get("suffix", ".py")

        def count() -> dict[str, int]:
            files = lines = 0
            for path in sorted(Path(context.source).rglob(f"*{suffix}")):
                context.check_cancelled()
                files += 1
                lines += len(path.read_text().splitlines())
            return {"files": files, "lines": lines}

        return await context.run_sync(count)


class OldStyleBlocking(OldStyleModule):
    """Loops in run_sync, checking for cancellation, until its timeout stops it."""

    name = "oldstyle_blocking"
    timeout = 0.5
    stopped = threading.Event()

    async def run(self, context: Any) -> dict[str, Any]:
        def spin() -> None:
            try:
                while True:
                    context.check_cancelled()
                    time.sleep(0.01)
            finally:
                OldStyleBlocking.stopped.set()

        await context.run_sync(spin)
        return {}


async def test_a_module_written_against_the_original_interface_still_works(tmp_path: Path) -> None:
    source = project(tmp_path / "src", files=4)
    (source / "notes.txt").write_text("a\nb\n")
    registry = ModuleRegistry([OldStyleModule(), OldStyleBlocking()])
    async with open_app(Settings(data_dir=tmp_path / "data"), registry=registry) as app:
        await app.create.execute(
            {
                "project_id": "p",
                "source": str(source),
                "modules": ["oldstyle", "oldstyle_blocking"],
                "options": {"module_options": {"oldstyle": {"suffix": ".txt"}}},
            }
        )
        running = await app.workflow.claim("w1", lease_seconds=60)
        assert running is not None
        final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
    results = {result.module: result for result in final.results}
    assert results["oldstyle"].outcome is ModuleOutcome.OK
    assert results["oldstyle"].summary == {"files": 1, "lines": 2}
    assert results["oldstyle_blocking"].outcome is ModuleOutcome.TIMEOUT
    # Its thread saw check_cancelled() raise and ended (it was not merely abandoned).
    assert OldStyleBlocking.stopped.wait(timeout=10)


def test_unpickling_a_built_in_analyzer_imports_no_telemetry_or_registry() -> None:
    """What a pool worker imports for a batch of the built-in modules: their analyzers,
    not the registry's logging and OpenTelemetry stack (their start-up is on the job's
    critical path)."""
    import pickle
    import subprocess
    import sys

    from orchestrator.modules.builtin import secrets_scan, todos

    payload = pickle.dumps((secrets_scan._SecretsAnalyzer(), todos._TodosAnalyzer()))
    unwanted = ("opentelemetry", "otel", "orchestrator.modules.registry")
    script = (
        "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
        f"print(sorted(m for m in sys.modules if m.startswith({unwanted!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, timeout=60, check=True
    )
    assert done.stdout.decode().strip() == "[]", done.stdout


async def test_a_daemon_thread_call_ticks_while_it_runs_and_a_quick_one_never() -> None:
    release = threading.Event()
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 3:
            release.set()  # the call ends once it has been ticked three times

    def blocked() -> str:
        release.wait(60)
        return "done"

    assert await run_in_daemon_thread(blocked, every=0.001, on_tick=tick) == "done"
    assert len(ticks) >= 3  # (a busy machine may tick once more before the thread ends)

    ticks.clear()
    assert await run_in_daemon_thread(lambda: "quick", every=60, on_tick=tick) == "quick"
    assert ticks == []


# --- daemon threads kept for the next call ------------------------------------------------


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Block until ``check()`` holds (a state another thread reaches), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_a_kept_thread_runs_the_next_call_under_its_name_and_is_named_idle_between() -> None:
    threads = _DaemonThreads(idle_seconds=60)
    seen: list[tuple[int, str, bool]] = []
    ran = threading.Event()

    def record() -> None:
        current = threading.current_thread()
        seen.append((current.ident or 0, current.name, current.daemon))
        ran.set()

    threads.run(record, "job-files-walk")
    assert ran.wait(10)
    wait_for(lambda: threads.idle == 1, "the thread never came back for another call")
    idle = [t for t in threading.enumerate() if t.ident == seen[0][0]]
    assert [t.name for t in idle] == [_DaemonThreads.IDLE_NAME]
    ran.clear()
    threads.run(record, "module:todos")
    assert ran.wait(10)
    assert seen[1] == (seen[0][0], "module:todos", True)  # the same daemon thread, renamed
    assert seen[0][1:] == ("job-files-walk", True)


def test_a_call_never_waits_for_a_busy_or_blocked_thread() -> None:
    threads = _DaemonThreads(idle_seconds=60)
    release, quick = threading.Event(), threading.Event()
    idents: list[int | None] = []

    def blocked() -> None:
        idents.append(threading.get_ident())
        release.wait(60)

    def fast() -> None:
        idents.append(threading.get_ident())
        quick.set()

    threads.run(blocked, "module:blocked")
    wait_for(lambda: len(idents) == 1, "the blocked call never started")
    threads.run(fast, "module:fast")
    assert quick.wait(10), "a call waited for a blocked thread"
    assert idents[0] != idents[1]
    release.set()
    wait_for(lambda: threads.idle == 2, "both threads should wait for calls now")


def test_a_call_taken_just_as_the_idle_wait_ends_still_runs() -> None:
    taken = threading.Event()

    class TimesOutLate(queue.SimpleQueue[Any]):
        """The idle wait times out only once a caller has taken the thread (and handed it a call)."""

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            if timeout is not None and not taken.is_set():
                assert taken.wait(10)
                raise queue.Empty
            return super().get(block, timeout)

    class Racing(_DaemonThreads):
        @staticmethod
        def _new_slot() -> queue.SimpleQueue[Any]:
            return TimesOutLate()

    threads = Racing(idle_seconds=60)
    ran: list[int] = []
    first, second = threading.Event(), threading.Event()

    def call(done: threading.Event) -> Callable[[], None]:
        def run() -> None:
            ran.append(threading.get_ident())
            done.set()

        return run

    threads.run(call(first), "module:first")
    assert first.wait(10)
    wait_for(lambda: threads.idle == 1, "the thread never came back for another call")
    threads.run(call(second), "module:second")
    taken.set()
    assert second.wait(10), "the call handed over as the wait timed out was lost"
    assert ran[0] == ran[1]
    wait_for(lambda: threads.idle == 1, "the thread should wait for calls again")


def test_an_idle_thread_ends_after_its_wait() -> None:
    threads = _DaemonThreads(idle_seconds=0.0005)
    done = threading.Semaphore(0)
    started: list[threading.Thread] = []

    def call() -> None:
        started.append(threading.current_thread())
        done.release()

    for n in range(500):
        threads.run(call, "module:n")
        assert done.acquire(timeout=10), f"call {n} was handed to a thread that had ended"
    for thread in set(started):
        thread.join(10)
        assert not thread.is_alive(), "an idle thread outlived its wait"
    assert threads.idle == 0


class Payload:
    """A result (or an exception's argument) whose lifetime a test follows."""


async def test_a_kept_thread_keeps_nothing_of_its_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    threads = _DaemonThreads(idle_seconds=60)
    monkeypatch.setattr(runners, "_THREADS", threads)  # each call below a new thread's first, then reused
    results: list[weakref.ref[Payload]] = []

    def make() -> Payload:
        payload = Payload()
        results.append(weakref.ref(payload))
        return payload

    def fail() -> None:
        payload = Payload()
        results.append(weakref.ref(payload))
        raise ValueError(payload)

    assert isinstance(await run_in_daemon_thread(make), Payload)
    with pytest.raises(ValueError):  # noqa: PT011 - the payload is what matters
        await run_in_daemon_thread(fail)
    assert isinstance(await run_in_daemon_thread(make), Payload)
    gc.collect()
    assert [ref() for ref in results] == [None, None, None], "an idle thread still holds a call's result"
    assert threads.idle == 1


async def test_calls_made_one_after_another_reuse_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _DaemonThreads(idle_seconds=60)
    monkeypatch.setattr(runners, "_THREADS", threads)
    idents = {await run_in_daemon_thread(threading.get_ident) for _ in range(50)}
    assert len(idents) == 1  # the thread is idle again before its caller hears that the call is done
    assert threads.idle == 1


def test_a_caller_is_told_its_call_is_done_once_the_thread_waits_for_the_next() -> None:
    threads = _DaemonThreads(idle_seconds=60)
    told = threading.Event()
    idle_when_told: list[int] = []

    def then() -> None:
        idle_when_told.append(threads.idle)
        told.set()

    threads.run(lambda: None, "module:x", then)
    assert told.wait(10)
    assert idle_when_told == [1]


def test_a_call_that_raises_after_all_still_tells_its_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _DaemonThreads(idle_seconds=60)
    told = threading.Event()
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))

    def broken() -> None:
        raise MemoryError("out of memory while reporting")

    threads.run(broken, "module:broken", told.set)
    assert told.wait(10), "the caller was never told: it would wait for ever"
    wait_for(lambda: len(seen) == 1, "the thread's failure was not reported")
    assert isinstance(seen[0], MemoryError)
    assert threads.idle == 0  # that thread ended; the next call gets another


def _forked_child_runs_a_call(conn: Any) -> None:
    # In the child: the parent's idle thread does not exist here.
    conn.send(anyio.run(run_in_daemon_thread, lambda: os.getpid()))


async def test_a_forked_child_starts_its_own_threads() -> None:
    import multiprocessing

    assert await run_in_daemon_thread(lambda: "warm") == "warm"  # leaves an idle thread here
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_forked_child_runs_a_call, args=(child_end,))
    child.start()
    try:
        assert await anyio.to_thread.run_sync(parent_end.poll, 30), "the child's call never ran"
        assert parent_end.recv() == child.pid
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
