"""``ExecuteAnalysisJobUseCase``: every module outcome, the failure policies, cancellation
and shutdown, and a real worker that survives every kind of module failure."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import anyio
import pytest

from orchestrator.bootstrap import App, open_app
from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobStatus,
    ModuleError,
    ModuleOutcome,
    ModuleResult,
    Phase,
    TransitionConflict,
)
from orchestrator.job_queue.worker import Worker, WorkerConfig
from orchestrator.modules.base import BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.usecases import CancelKind, JobControl
from orchestrator.usecases.execute import abandoned_modules
from otel.logs import EVENT_KEY, FIELDS_KEY
from otel.vocabulary import OperationEvent

pytestmark = pytest.mark.anyio


# --- test modules ------------------------------------------------------------------------------


class OkModule(BaseModule):
    name: ClassVar[str] = "ok"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        return {"files": 3, "module": context.module}


class DelayedOkModule(BaseModule):
    """Finishes well after a failing sibling: proves complete_all lets it run."""

    name: ClassVar[str] = "delayed"
    expected_runtime: ClassVar[float] = 2.0
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await anyio.sleep(0.2)
        return {"delayed": True}


class FailingModule(BaseModule):
    name: ClassVar[str] = "failing"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        raise ModuleError("malformed manifest")


class TimeoutModule(BaseModule):
    name: ClassVar[str] = "sleepy"
    expected_runtime: ClassVar[float] = 0.1
    timeout: ClassVar[float] = 0.2

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await anyio.sleep(5)
        return {}


class PanicModule(BaseModule):
    name: ClassVar[str] = "panicky"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        raise RuntimeError("boom")


class ExitModule(BaseModule):
    name: ClassVar[str] = "exiting"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        raise SystemExit(3)


class OverrunModule(BaseModule):
    name: ClassVar[str] = "overrun"
    expected_runtime: ClassVar[float] = 0.05
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await anyio.sleep(0.3)
        return {"slow": True}


class OwnTimeoutModule(BaseModule):
    """Its own code raises TimeoutError (a network call gave up) well before its timeout."""

    name: ClassVar[str] = "owntimeout"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        raise TimeoutError("upstream did not answer")


class NotJsonModule(BaseModule):
    name: ClassVar[str] = "notjson"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        return {"when": object()}


class RaisingModule(BaseModule):
    """Raises what it is given: exceptions that are not Exceptions, which took the worker
    (and every sibling job) down when they escaped."""

    timeout: ClassVar[float] = 5.0

    def __init__(self, name: str, raise_: Callable[[], BaseException]) -> None:
        self.name = name  # type: ignore[misc]
        self._raise = raise_

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await anyio.sleep(0)
        raise self._raise()


class DeafModule(BaseModule):
    """Swallows its cancellation and returns long after its timeout (and a summary)."""

    name: ClassVar[str] = "deaf"
    expected_runtime: ClassVar[float] = 0.1
    timeout: ClassVar[float] = 0.2

    async def run(self, context: ModuleContext) -> ModuleSummary:
        until = anyio.current_time() + 0.6
        while anyio.current_time() < until:
            with contextlib.suppress(BaseException):  # the misbehaviour under test
                await anyio.sleep(0.05)
        return {"finished": True}


class ReraisingModule(BaseModule):
    """Turns its timeout's cancellation into an error of its own."""

    name: ClassVar[str] = "reraising"
    expected_runtime: ClassVar[float] = 0.1
    timeout: ClassVar[float] = 0.2

    async def run(self, context: ModuleContext) -> ModuleSummary:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            raise ModuleError("interrupted while waiting") from None
        return {}


class HopelessModule(BaseModule):
    """Ignores every cancellation, its timeout's and its job's, until the test lets it go."""

    expected_runtime: ClassVar[float] = 0.1

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name  # type: ignore[misc]
        self.timeout = timeout  # type: ignore[misc]
        self.started = 0
        self.ended = 0
        self._released: anyio.Event | None = None

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.started += 1
        self._released = self._released or anyio.Event()
        with anyio.CancelScope(shield=True):  # the misbehaviour under test
            await self._released.wait()
        self.ended += 1
        return {"finished": True}

    def release(self) -> None:
        if self._released is not None:
            self._released.set()


class AnsweringModule(BaseModule):
    """Answers its job's cancellation with something of its own: kept as its outcome."""

    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 30.0

    def __init__(self, name: str, answer: Callable[[], ModuleSummary]) -> None:
        self.name = name  # type: ignore[misc]
        self._answer = answer
        self.started = 0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.started += 1
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            return self._answer()
        return {}


def _raise(exc: BaseException) -> ModuleSummary:
    raise exc


ANSWERS: dict[str, tuple[Callable[[], ModuleSummary], ModuleOutcome, str | None]] = {
    "answer_summary": (lambda: {"partial": True}, ModuleOutcome.OK, None),
    "answer_error": (lambda: _raise(ModuleError("stopped half way")), ModuleOutcome.ERROR, "stopped half way"),
    "answer_panic": (lambda: _raise(RuntimeError("oops")), ModuleOutcome.PANIC, "RuntimeError (a panic; error id"),
}


RAISERS: dict[str, Callable[[], BaseException]] = {
    "interrupting": KeyboardInterrupt,
    "genexit": GeneratorExit,
    "bare": BaseException,
    "owncancel": lambda: anyio.get_cancelled_exc_class()(),
    "group": lambda: BaseExceptionGroup("several", [KeyboardInterrupt(), ValueError("x")]),
}


class BlockingModule(BaseModule):
    """Holds the event loop: a blocking call in async run, without run_sync."""

    name: ClassVar[str] = "blocking"
    timeout: ClassVar[float] = 30.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        time.sleep(1.0)  # the misbehaviour under test
        return {}


class ReturningModule(BaseModule):
    """Returns what it is given."""

    timeout: ClassVar[float] = 5.0

    def __init__(self, name: str, summary: object) -> None:
        self.name = name  # type: ignore[misc]
        self._summary = summary

    async def run(self, context: ModuleContext) -> ModuleSummary:
        return self._summary  # type: ignore[return-value]


class SlowModule(BaseModule):
    """Sleeps 5 s and never checks for cancellation itself."""

    name: ClassVar[str] = "slow"
    expected_runtime: ClassVar[float] = 10.0
    timeout: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self.started = 0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.started += 1
        await anyio.sleep(5)
        return {"slept": 5}


def registry(slow: SlowModule | None = None, hopeless: tuple[HopelessModule, ...] = ()) -> ModuleRegistry:
    return ModuleRegistry(
        [
            *hopeless,
            OkModule(),
            DelayedOkModule(),
            FailingModule(),
            TimeoutModule(),
            PanicModule(),
            ExitModule(),
            OverrunModule(),
            NotJsonModule(),
            OwnTimeoutModule(),
            DeafModule(),
            ReraisingModule(),
            # Keys that become one once stored (one value was lost without a word), and a
            # key JSON has no form for (it was stored as its repr).
            ReturningModule("colliding", {1: "one", "1": "another one"}),
            ReturningModule("tuplekey", {"nested": {(1, 2): "pair"}}),
            # Over the 256 KiB limit: one long text, and many short numbers (known only
            # once encoded: 30,000 x 11 characters).
            ReturningModule("longtext", {"text": "x" * (256 * 1024)}),
            ReturningModule("numbers", {"numbers": [123456789] * 30_000}),
            BlockingModule(),
            *(AnsweringModule(name, answer) for name, (answer, _, _) in ANSWERS.items()),
            *(RaisingModule(name, raise_) for name, raise_ in RAISERS.items()),
            slow or SlowModule(),
        ]
    )


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def slow() -> SlowModule:
    return SlowModule()


@pytest.fixture
def hopeless() -> tuple[HopelessModule, HopelessModule]:
    """One past its 0.2 s timeout at once, one that only a cancellation reaches."""
    return HopelessModule("hopeless", 0.2), HopelessModule("hopeless_long", 30.0)


@pytest.fixture
async def app(tmp_path: Path, slow: SlowModule, hopeless: tuple[HopelessModule, ...]) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data", poll_seconds=0.05, cancel_poll_seconds=0.1, module_abandon_seconds=1.0
    )
    try:
        async with open_app(settings, registry=registry(slow, hopeless)) as opened:
            yield opened
    finally:
        for module in hopeless:  # abandoned, still running: let them end with the test
            module.release()


async def create(app: App, source: Path, modules: list[str], **options: Any) -> Job:
    request: dict[str, Any] = {"project_id": "p", "source": str(source), "modules": modules}
    if options:
        request["options"] = options
    job = await app.create.execute(request)
    assert job.status is JobStatus.QUEUED
    return job


async def claim(app: App, job: Job) -> Job:
    running = await app.workflow.claim("w1", lease_seconds=30)
    assert running is not None
    assert (running.id, running.status) == (job.id, JobStatus.RUNNING)
    return running


async def run_job(app: App, source: Path, modules: list[str], **options: Any) -> Job:
    running = await claim(app, await create(app, source, modules, **options))
    final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
    assert final == await app.store.get(running.id)
    return final


def by_module(job: Job) -> dict[str, ModuleResult]:
    assert [r.module for r in job.results] == list(job.modules)
    return {r.module: r for r in job.results}


# --- one module, every outcome -----------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    outcome: ModuleOutcome
    error_type: str | None
    error: str | None  # a substring of the result's error
    status: JobStatus
    category: ErrorCategory | None


CASES: dict[str, Expect] = {
    "ok": Expect(ModuleOutcome.OK, None, None, JobStatus.COMPLETED, None),
    "failing": Expect(ModuleOutcome.ERROR, "ModuleError", "malformed manifest", JobStatus.FAILED, ErrorCategory.MODULE),
    "sleepy": Expect(
        ModuleOutcome.TIMEOUT, "TimeoutError", "0.2 s timeout", JobStatus.FAILED, ErrorCategory.MODULE_TIMEOUT
    ),
    "panicky": Expect(
        ModuleOutcome.PANIC,
        "RuntimeError",
        "RuntimeError (a panic; error id",
        JobStatus.FAILED,
        ErrorCategory.MODULE_PANIC,
    ),
    "exiting": Expect(ModuleOutcome.PANIC, "SystemExit", "SystemExit", JobStatus.FAILED, ErrorCategory.MODULE_PANIC),
    "overrun": Expect(ModuleOutcome.OK, None, None, JobStatus.COMPLETED, None),
    "owntimeout": Expect(
        ModuleOutcome.PANIC,
        "TimeoutError",
        "TimeoutError (a panic; error id",
        JobStatus.FAILED,
        ErrorCategory.MODULE_PANIC,
    ),
    "notjson": Expect(
        ModuleOutcome.ERROR, "ModuleError", "not JSON-serialisable", JobStatus.FAILED, ErrorCategory.MODULE
    ),
    "deaf": Expect(
        ModuleOutcome.TIMEOUT,
        "TimeoutError",
        "0.2 s timeout (it ignored the cancellation and returned after 0.",
        JobStatus.FAILED,
        ErrorCategory.MODULE_TIMEOUT,
    ),
    "colliding": Expect(
        ModuleOutcome.ERROR,
        "ModuleError",
        "not JSON-serialisable: two keys of one object are the same text once stored",
        JobStatus.FAILED,
        ErrorCategory.MODULE,
    ),
    "tuplekey": Expect(
        ModuleOutcome.ERROR,
        "ModuleError",
        "not JSON-serialisable: a key of type tuple is not a JSON object key",
        JobStatus.FAILED,
        ErrorCategory.MODULE,
    ),
    "longtext": Expect(
        ModuleOutcome.ERROR,
        "ModuleError",
        "returned a summary of more than 262144 bytes (limit 262144)",
        JobStatus.FAILED,
        ErrorCategory.MODULE,
    ),
    "numbers": Expect(
        ModuleOutcome.ERROR,
        "ModuleError",
        # '{"numbers": [' (13), 30,000 x 9 digits, 29,999 x ', ', ']}' (2)
        "returned a summary of 330013 bytes (limit 262144)",
        JobStatus.FAILED,
        ErrorCategory.MODULE,
    ),
    "reraising": Expect(
        ModuleOutcome.TIMEOUT,
        "TimeoutError",
        "0.2 s timeout (it raised ModuleError when cancelled)",
        JobStatus.FAILED,
        ErrorCategory.MODULE_TIMEOUT,
    ),
    **{
        name: Expect(
            ModuleOutcome.PANIC, type_, f"{type_} (a panic; error id", JobStatus.FAILED, ErrorCategory.MODULE_PANIC
        )
        for name, type_ in [
            ("interrupting", "KeyboardInterrupt"),
            ("genexit", "GeneratorExit"),
            ("bare", "BaseException"),
            ("owncancel", "CancelledError"),
            ("group", "BaseExceptionGroup"),
        ]
    },
}


@pytest.mark.parametrize("module", list(CASES))
async def test_each_module_outcome_becomes_a_result_and_decides_the_job_status(
    app: App, tmp_path: Path, module: str
) -> None:
    expect = CASES[module]
    started = time.perf_counter()

    final = await run_job(app, tmp_path, [module])

    assert time.perf_counter() - started < 4.0  # not the 5 s a module sleeps (generous: a loaded machine)
    result = by_module(final)[module]
    assert result.outcome is expect.outcome
    assert result.error_type == expect.error_type
    if expect.error is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert expect.error in result.error
    assert (result.attempt, result.version) == (1, "1.0.0")
    assert final.status is expect.status
    assert final.error_category is expect.category
    assert final.finished_ns is not None
    assert (final.lease_owner, final.lease_expires_ns) == (None, None)
    if expect.status is JobStatus.FAILED:
        assert final.error_phase is Phase.EXECUTE
        assert final.reason is not None
        assert final.reason.startswith("1 of 1 modules failed")
        assert f"{module} ({expect.category})" in final.reason
        assert result.summary == {}
    else:
        assert final.error_phase is None
        assert final.reason is not None
        assert final.reason.startswith("its module completed")
    last = (await app.store.history(final.id))[-1]
    assert (last.status_from, last.status_to, last.reason, last.worker_id) == (
        JobStatus.RUNNING,
        final.status,
        final.reason,
        "w1",
    )


async def test_a_timed_out_module_is_stopped_at_its_timeout(app: App, tmp_path: Path) -> None:
    final = await run_job(app, tmp_path, ["sleepy"])
    result = by_module(final)["sleepy"]
    assert result.timeout_ms == 200
    assert 190 <= result.duration_ms < 4000


async def test_an_overrun_is_a_warning_in_the_reason_not_a_failure(app: App, tmp_path: Path) -> None:
    final = await run_job(app, tmp_path, ["ok", "overrun"])

    results = by_module(final)
    assert final.status is JobStatus.COMPLETED
    assert results["overrun"].outcome is ModuleOutcome.OK
    assert results["overrun"].overran
    assert results["overrun"].duration_ms >= 300
    assert results["overrun"].expected_ms == 50
    assert results["overrun"].summary == {"slow": True}
    assert not results["ok"].overran
    assert final.reason == "all 2 modules completed; overrun exceeded expected runtime"


async def test_a_module_summary_survives_the_store_round_trip(app: App, tmp_path: Path) -> None:
    final = await run_job(app, tmp_path, ["ok"])
    assert by_module(final)["ok"].summary == {"files": 3, "module": "ok"}


# --- failure policies --------------------------------------------------------------------------


async def test_complete_all_runs_every_module_and_keeps_every_result(app: App, tmp_path: Path) -> None:
    final = await run_job(app, tmp_path, ["failing", "ok", "delayed", "panicky"])

    results = by_module(final)
    assert {name: r.outcome for name, r in results.items()} == {
        "failing": ModuleOutcome.ERROR,
        "ok": ModuleOutcome.OK,
        "delayed": ModuleOutcome.OK,
        "panicky": ModuleOutcome.PANIC,
    }
    assert results["delayed"].summary == {"delayed": True}
    assert results["delayed"].duration_ms >= 200  # it ran to the end after the failures
    assert final.status is JobStatus.FAILED
    assert final.reason is not None
    assert final.reason.startswith("2 of 4 modules failed")
    assert "failing (module): malformed manifest" in final.reason
    assert "panicky (module_panic): RuntimeError (a panic; error id " in final.reason
    assert "boom" not in final.reason  # a panic's message may quote analysed data: only its type is shown
    assert final.error_category in (ErrorCategory.MODULE, ErrorCategory.MODULE_PANIC)


async def test_fail_fast_cancels_the_other_modules_at_the_first_failure(
    app: App, tmp_path: Path, slow: SlowModule
) -> None:
    started = time.perf_counter()

    final = await run_job(app, tmp_path, ["slow", "failing"], failure_policy="fail_fast")

    assert time.perf_counter() - started < 4.0  # cut, not the 5 s slow sleeps (generous: a loaded machine)
    results = by_module(final)
    assert slow.started == 1
    assert results["failing"].outcome is ModuleOutcome.ERROR
    assert results["slow"].outcome is ModuleOutcome.CANCELLED
    assert results["slow"].error == "cancelled"
    assert final.status is JobStatus.FAILED
    assert (final.error_category, final.error_phase) == (ErrorCategory.MODULE, Phase.EXECUTE)
    assert final.reason is not None
    assert final.reason.startswith("1 of 2 modules failed")


async def test_fail_fast_cancels_modules_that_had_not_started(app: App, tmp_path: Path, slow: SlowModule) -> None:
    final = await run_job(app, tmp_path, ["failing", "slow", "ok"], failure_policy="fail_fast", concurrency=1)

    results = by_module(final)
    assert results["failing"].outcome is ModuleOutcome.ERROR
    assert slow.started == 0
    for name in ("slow", "ok"):
        assert results[name].outcome is ModuleOutcome.CANCELLED
        assert results[name].error == "cancelled before it started"
        assert results[name].duration_ms == 0
    assert final.status is JobStatus.FAILED


# --- cancellation and shutdown -----------------------------------------------------------------


class Started(Protocol):
    started: int


async def execute_then_cancel(
    app: App, running: Job, module: Started, kind: CancelKind, reason: str
) -> tuple[Job, float]:
    """Execute ``running``; once ``module`` runs, cancel; return the job and the seconds
    from the cancel to the end of execute."""
    control = JobControl()
    outcome: dict[str, Job] = {}

    async def execute() -> None:
        outcome["job"] = await app.execute.execute(running, control=control, worker_id="w1")

    async with anyio.create_task_group() as tg:
        tg.start_soon(execute)
        with anyio.fail_after(2):
            while not module.started:
                await anyio.sleep(0.01)
        cancelled_at = time.perf_counter()
        control.cancel(kind, reason)
    return outcome["job"], time.perf_counter() - cancelled_at


# A job of one module runs it in the job's own task (no task group): a cancel reaches it
# there as it reaches the module tasks of a job of several.
@pytest.mark.parametrize("modules", [["ok", "slow"], ["slow"]], ids=["two modules", "one module"])
async def test_a_user_cancel_mid_run_ends_the_job_cancelled_within_a_second(
    app: App, tmp_path: Path, slow: SlowModule, modules: list[str]
) -> None:
    running = await claim(app, await create(app, tmp_path, modules))

    final, took = await execute_then_cancel(app, running, slow, CancelKind.USER, "stopped by the test")

    assert took < 4.0  # cut, not the 5 s slow sleeps (generous: a loaded machine)
    assert final.status is JobStatus.CANCELLED
    assert (final.reason, final.error_category, final.error_phase) == (
        "stopped by the test",
        ErrorCategory.CANCELLED,
        Phase.EXECUTE,
    )
    results = by_module(final)
    assert results["slow"].outcome is ModuleOutcome.CANCELLED
    assert [results[m].outcome for m in modules if m != "slow"] == [ModuleOutcome.OK] * (len(modules) - 1)
    assert await app.store.get(final.id) == final
    last = (await app.store.history(final.id))[-1]
    assert (last.status_from, last.status_to, last.reason) == (
        JobStatus.RUNNING,
        JobStatus.CANCELLED,
        "stopped by the test",
    )


async def test_a_shutdown_cancel_sends_the_job_back_to_the_queue_with_the_next_attempt(
    app: App, tmp_path: Path, slow: SlowModule
) -> None:
    running = await claim(app, await create(app, tmp_path, ["slow"]))

    final, took = await execute_then_cancel(app, running, slow, CancelKind.SHUTDOWN, "worker_shutdown")

    assert took < 4.0  # cut, not the 5 s slow sleeps (generous: a loaded machine)
    assert final.status is JobStatus.QUEUED
    assert (final.attempt, final.reason) == (2, "worker_shutdown")
    assert final.error_category is None
    assert (final.lease_owner, final.lease_expires_ns) == (None, None)
    last = (await app.store.history(final.id))[-1]
    assert (last.status_from, last.status_to, last.reason, last.attempt) == (
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        "worker_shutdown",
        2,
    )
    assert await app.store.queue_depth() == 1
    again = await app.workflow.claim("w2", lease_seconds=30)
    assert again is not None
    assert (again.id, again.attempt) == (final.id, 2)


async def test_a_lost_lease_discards_the_results_and_writes_nothing(app: App, tmp_path: Path, slow: SlowModule) -> None:
    running = await claim(app, await create(app, tmp_path, ["slow"]))
    history_before = await app.store.history(running.id)

    final, took = await execute_then_cancel(app, running, slow, CancelKind.LEASE_LOST, "taken over")

    assert took < 4.0  # cut, not the 5 s slow sleeps (generous: a loaded machine)
    assert final == running
    assert await app.store.get(running.id) == running
    assert await app.store.history(running.id) == history_before


def abandonments(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (r.levelno, r.getMessage(), getattr(r, FIELDS_KEY))
        for r in caplog.records
        if getattr(r, EVENT_KEY, None) == OperationEvent.MODULE_ABANDONED
    ]


async def test_a_module_ignoring_its_timeout_for_good_is_abandoned_and_its_job_ends(
    app: App, tmp_path: Path, hopeless: tuple[HopelessModule, HopelessModule], caplog: pytest.LogCaptureFixture
) -> None:
    """It held its job Running for good (the heartbeat kept the lease alive): now the job
    ends, the module's result saying it was abandoned, and the module is left to end."""
    caplog.set_level(logging.INFO, logger="orchestrator.usecases.execute")
    module = hopeless[0]

    with anyio.fail_after(4):  # not for good
        final = await run_job(app, tmp_path, ["hopeless", "ok"])

    results = by_module(final)
    assert (final.status, final.error_category) == (JobStatus.FAILED, ErrorCategory.MODULE_TIMEOUT)
    assert results["hopeless"].outcome is ModuleOutcome.TIMEOUT
    assert results["hopeless"].error == (
        "exceeded its 0.2 s timeout (it ignored the cancellation for 1 s and was abandoned, "
        "still running in the worker)"
    )
    assert results["hopeless"].error_type == "TimeoutError"
    assert 1190 <= results["hopeless"].duration_ms < 4000  # its timeout and the grace
    assert results["ok"].outcome is ModuleOutcome.OK
    assert (module.started, module.ended) == (1, 0)
    assert abandoned_modules() == [f"job {final.id} module hopeless"]
    [(level, message, fields)] = abandonments(caplog)
    assert level == logging.WARNING
    assert message == (
        "module hopeless: it ignored the cancellation for 1 s and was abandoned, still running in the worker; "
        "its job goes on without it"
    )
    assert (fields["job_id"], fields["module"]) == (final.id, "hopeless")

    module.release()  # it ends at last: said, and forgotten
    with anyio.fail_after(2):
        while module.ended == 0 or len(abandonments(caplog)) < 2:
            await anyio.sleep(0.01)
    level, message, fields = abandonments(caplog)[1]
    assert level == logging.INFO
    assert re.fullmatch(r"abandoned module hopeless ended after [0-9.]+ s", message), message
    assert fields["ended"] is True
    assert abandoned_modules() == []
    assert await app.store.get(final.id) == final  # its late summary changed nothing


@pytest.mark.parametrize(
    ("kind", "status"),
    [(CancelKind.USER, JobStatus.CANCELLED), (CancelKind.SHUTDOWN, JobStatus.QUEUED)],
    ids=["user cancel", "shutdown"],
)
async def test_a_module_ignoring_its_jobs_cancellation_is_abandoned_after_the_grace(
    app: App,
    tmp_path: Path,
    hopeless: tuple[HopelessModule, HopelessModule],
    kind: CancelKind,
    status: JobStatus,
) -> None:
    """A user's cancel, or a worker's shutdown, waited for the module for good."""
    running = await claim(app, await create(app, tmp_path, ["hopeless_long"]))
    with anyio.fail_after(6):  # not for good
        final, took = await execute_then_cancel(app, running, hopeless[1], kind, "stopped by the test")
    assert took >= 1.0  # it had the grace
    assert (final.status, final.reason) == (status, "stopped by the test")
    result = by_module(final)["hopeless_long"]
    assert result.outcome is ModuleOutcome.CANCELLED
    assert result.error == (
        "cancelled (it ignored the cancellation for 1 s and was abandoned, still running in the worker)"
    )
    assert abandoned_modules() == [f"job {final.id} module hopeless_long"]


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_a_module_answering_its_jobs_cancellation_keeps_its_own_outcome(
    app: App, tmp_path: Path, name: str
) -> None:
    """A module that returns a summary, or raises, when its job is cancelled: its outcome
    is what it did (as before modules ran in tasks of their own), the job Cancelled."""
    _, outcome, error = ANSWERS[name]
    module = app.registry.get(name)
    assert isinstance(module, AnsweringModule)
    running = await claim(app, await create(app, tmp_path, [name]))
    final, _ = await execute_then_cancel(app, running, module, CancelKind.USER, "stopped by the test")
    assert (final.status, final.reason) == (JobStatus.CANCELLED, "stopped by the test")
    result = by_module(final)[name]
    assert result.outcome is outcome
    if error is None:
        assert (result.error, result.summary) == (None, {"partial": True})
    else:
        assert result.error is not None
        assert result.error.startswith(error), result.error
        assert result.summary == {}


async def test_a_worker_stops_claiming_once_it_abandoned_its_limit_of_modules(
    app: App, tmp_path: Path, hopeless: tuple[HopelessModule, HopelessModule], caplog: pytest.LogCaptureFixture
) -> None:
    """Each abandoned module keeps its memory and CPU: past the limit the worker stops,
    for its supervisor to start a fresh process, instead of piling them up."""
    caplog.set_level(logging.ERROR, logger="orchestrator.job_queue.worker")
    jobs = [await create(app, tmp_path, ["hopeless"]) for _ in range(3)]
    config = WorkerConfig(concurrency=1, max_abandoned_modules=2, shutdown_grace_seconds=0)
    worker = Worker(app.workflow, app.execute, app.telemetry, config, worker_id="recycled")
    with anyio.fail_after(10):
        await worker.run()  # returns by itself
    assert worker.recycled
    for job in jobs[:2]:
        assert (await app.store.get(job.id)).error_category is ErrorCategory.MODULE_TIMEOUT
    assert (await app.store.get(jobs[2].id)).status is JobStatus.QUEUED  # left to a fresh worker
    said = [r.getMessage() for r in caplog.records if getattr(r, EVENT_KEY, None) == OperationEvent.WORKER_RECYCLE]
    assert said == [
        "2 modules abandoned by this process still run (limit 2, ORCHESTRATOR_MAX_ABANDONED_MODULES): "
        "this worker stops claiming and stops, for its supervisor to start a fresh process"
    ]


async def test_fail_fast_abandons_a_sibling_that_ignores_its_cancellation(
    app: App, tmp_path: Path, hopeless: tuple[HopelessModule, HopelessModule]
) -> None:
    with anyio.fail_after(4):  # not for good
        final = await run_job(app, tmp_path, ["failing", "hopeless_long"], failure_policy="fail_fast")
    results = by_module(final)
    assert (final.status, final.error_category) == (JobStatus.FAILED, ErrorCategory.MODULE)
    assert results["failing"].outcome is ModuleOutcome.ERROR
    assert results["hopeless_long"].outcome is ModuleOutcome.CANCELLED
    assert results["hopeless_long"].error is not None
    assert "was abandoned" in results["hopeless_long"].error


async def test_executing_a_job_that_is_not_running_is_refused(app: App, tmp_path: Path) -> None:
    queued = await create(app, tmp_path, ["ok"])
    with pytest.raises(TransitionConflict, match="was queued, not running"):
        await app.execute.execute(queued, worker_id="w1")
    assert (await app.store.get(queued.id)).status is JobStatus.QUEUED


# --- the worker survives -----------------------------------------------------------------------


async def test_a_worker_survives_every_kind_of_module_failure(app: App, tmp_path: Path) -> None:
    kinds = ["failing", "sleepy", "panicky", "exiting", "notjson", "overrun", "ok", *RAISERS, "deaf"]
    jobs = {kind: await create(app, tmp_path, [kind]) for kind in kinds}
    worker = app.worker(concurrency=4, worker_id="survivor")
    stopped = anyio.Event()

    async def run_worker() -> None:
        await worker.run()
        stopped.set()

    async def all_terminal(ids: list[str]) -> dict[str, Job]:
        with anyio.fail_after(4):
            while True:
                current = {job_id: await app.store.get(job_id) for job_id in ids}
                if all(j.status.terminal for j in current.values()):
                    return current
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_worker)
        finals = await all_terminal([j.id for j in jobs.values()])
        assert not stopped.is_set(), "the worker stopped on its own"

        # Still alive and claiming: one more job after all those failures.
        extra = await create(app, tmp_path, ["ok"])
        extra_final = (await all_terminal([extra.id]))[extra.id]
        assert not stopped.is_set()
        worker.stop()
        with anyio.fail_after(2):
            await stopped.wait()

    statuses = {kind: finals[job.id].status for kind, job in jobs.items()}
    assert statuses == {kind: CASES[kind].status for kind in kinds}
    for kind, job in jobs.items():
        final = finals[job.id]
        assert final.error_category is CASES[kind].category
        assert by_module(final)[kind].outcome is CASES[kind].outcome
        assert final.attempt == 1
    assert extra_final.status is JobStatus.COMPLETED
    assert worker.jobs_run == len(kinds) + 1
    assert worker.in_flight == {}


async def test_the_module_holding_the_event_loop_is_named_in_a_warning(
    app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop held by a module: nothing else of the worker runs (the job may lose its
    lease and end worker_lost, category queue); a warning names the module holding it
    (not its sibling, waiting meanwhile) and its job, another says for how long once it
    turns again."""
    job = await create(app, tmp_path, ["delayed", "blocking"])
    config = WorkerConfig(concurrency=1, loop_stall_seconds=0.2)
    worker = Worker(app.workflow, app.execute, app.telemetry, config, worker_id="staller")
    caplog.set_level(logging.WARNING, logger="orchestrator.job_queue.stall")

    def reports() -> list[tuple[str, dict[str, Any]]]:
        """The report naming the module and the one after it (a loaded machine may
        hold the loop briefly elsewhere too: those name no module of this job)."""
        said = [
            (r.getMessage(), getattr(r, FIELDS_KEY)) for r in caplog.records if r.name == "orchestrator.job_queue.stall"
        ]
        at = next((i for i, (message, _) in enumerate(said) if "by module blocking" in message), len(said))
        return said[at : at + 2]

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(10):
            while not (await app.store.get(job.id)).status.terminal or len(reports()) < 2:
                await anyio.sleep(0.05)
        worker.stop()
    (held, fields), (again, _) = reports()
    assert held.startswith("the event loop has been held for ")
    assert (
        f" s by module blocking of job {job.id}: code in an async module that does not await (a blocking call "
        "outside run_sync) stops heartbeats, cancellations and timeouts; its job may lose its lease"
    ) in held
    assert fields["holder"] == f"module blocking of job {job.id}"
    found = re.fullmatch(r"the event loop turns again after being held for ([0-9.]+) s", again)
    assert found is not None, again
    assert 0.8 <= float(found.group(1)) <= 3.0  # the module's 1 s, give or take the beat
    assert (await app.store.get(job.id)).status is JobStatus.COMPLETED


async def test_a_loop_held_by_code_of_no_module_names_the_jobs_that_ran(
    app: App, tmp_path: Path, slow: SlowModule, caplog: pytest.LogCaptureFixture
) -> None:
    """Held elsewhere (the process's own code, a stopped process): the monitor cannot
    tell more than the jobs that ran and their modules."""
    job = await create(app, tmp_path, ["slow"])
    config = WorkerConfig(concurrency=1, loop_stall_seconds=0.2, shutdown_grace_seconds=0)
    worker = Worker(app.workflow, app.execute, app.telemetry, config, worker_id="staller")
    caplog.set_level(logging.WARNING, logger="orchestrator.job_queue.stall")
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(5):
            while not slow.started:
                await anyio.sleep(0.01)
        worker.stall.reported.clear()
        time.sleep(1.0)  # this test's own code holds the loop, while the module awaits
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(worker.stall.reported.wait)
        worker.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "orchestrator.job_queue.stall"]
    assert any(f"s while job {job.id} (modules slow) ran: code in an async module" in m for m in said), said
    assert not any("by module" in m for m in said), said


async def test_a_huge_summary_is_refused_without_being_copied_or_encoded(tmp_path: Path) -> None:
    """A 64 MB text in a summary was canonicalised and encoded before the size limit was
    checked (a 200 MB one took 676 MB)."""
    huge = ReturningModule("huge", {"ok": 1, "nested": [{"text": "y" * (64 * 1024 * 1024)}]})
    settings = Settings(data_dir=tmp_path / "data", poll_seconds=0.05)
    async with open_app(settings, registry=ModuleRegistry([huge])) as app:
        running = await claim(app, await create(app, tmp_path, ["huge"]))
        tracemalloc.start()
        try:
            final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    result = by_module(final)["huge"]
    assert (result.outcome, result.error) == (
        ModuleOutcome.ERROR,
        "returned a summary of more than 262144 bytes (limit 262144)",
    )
    assert peak < 8 * 1024 * 1024, peak  # not one more copy of the text


# --- module concurrency ------------------------------------------------------------------------


class Crowd:
    """How many of the gated modules run at once; the gate opens when ``expected`` do."""

    def __init__(self, expected: int) -> None:
        self.expected, self.running, self.peak = expected, 0, 0
        self.gate = anyio.Event()


class GatedModule(BaseModule):
    timeout: ClassVar[float] = 10.0

    def __init__(self, name: str, crowd: Crowd) -> None:
        self.name = name  # type: ignore[misc]
        self.crowd = crowd

    async def run(self, context: ModuleContext) -> ModuleSummary:
        crowd = self.crowd
        crowd.running += 1
        crowd.peak = max(crowd.peak, crowd.running)
        if crowd.running >= crowd.expected:
            crowd.gate.set()
        with anyio.fail_after(5):
            await crowd.gate.wait()
        crowd.running -= 1
        return {}


@pytest.mark.parametrize(("limit", "peak"), [(1, 1), (2, 2), (3, 3), (4, 4), (16, 4)])
async def test_a_job_runs_at_most_its_concurrency_of_modules_at_once(tmp_path: Path, limit: int, peak: int) -> None:
    crowd = Crowd(expected=min(limit, 4))
    names = [f"gated{index}" for index in range(4)]
    settings = Settings(data_dir=tmp_path / "data", poll_seconds=0.05)
    async with open_app(settings, registry=ModuleRegistry([GatedModule(n, crowd) for n in names])) as app:
        final = await run_job(app, tmp_path, names, concurrency=limit)
    assert final.status is JobStatus.COMPLETED
    assert crowd.peak == peak
