"""``ExecuteAnalysisJobUseCase``: a claimed (Running) job's modules in parallel, then
its terminal transition.

Modules run in an anyio task group under a concurrency limit, each with a hard
timeout; an overrun of the expected runtime is a warning, not a failure. The
failure policy decides whether a failure cancels the rest (``fail_fast``) or every
module runs (``complete_all``). Cancellation is cooperative: :class:`JobControl`
cancels the job's scope, the modules see it, and the job ends Cancelled (a user's
request) or goes back to the queue (a worker shutting down). Nothing a module does
can escape: module errors, timeouts and panics all become results.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import CoroutineType, FrameType
from typing import Any, Protocol, cast

import anyio
from opentelemetry import trace

from orchestrator.domain import (
    ErrorCategory,
    FailurePolicy,
    Job,
    JobStatus,
    ModuleError,
    ModuleOutcome,
    ModuleResult,
    OrchestratorError,
    PersistenceError,
    Phase,
    TransitionConflict,
    now_ns,
)
from orchestrator.domain.errors import new_error_id
from orchestrator.domain.values import MAX_DEPTH, canonical_json
from orchestrator.modules.analysis import AnalysisConfig
from orchestrator.modules.base import AnalysisModule, ModuleContext
from orchestrator.modules.budget import Budget
from orchestrator.modules.job_run import JobAnalysis
from orchestrator.modules.progress import ProgressListener
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.modules.runners import BatchRunner
from orchestrator.telemetry import JobTelemetry, as_current
from orchestrator.workflow import JobWorkflow
from otel import context, logs
from otel.instrument import instrument
from otel.vocabulary import Attr, OperationEvent, SpanName

__all__ = ["CancelKind", "ExecuteAnalysisJobUseCase", "JobControl", "JobExecutor"]

log = logging.getLogger(__name__)


class CancelKind(enum.StrEnum):
    #: A user asked: the job ends Cancelled.
    USER = "user"
    #: The worker is shutting down: the job goes back to the queue.
    SHUTDOWN = "shutdown"
    #: The worker no longer holds the lease: another worker owns the job now.
    LEASE_LOST = "lease_lost"


@dataclass
class JobControl:
    """Cancels one running job from outside (the worker's heartbeat, a signal)."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    kind: CancelKind | None = None
    reason: str | None = None
    #: The worker is done with the job (its outcome written, or given up: see ``left``).
    ended: bool = False
    #: Why the worker gave the job up unfinished (its outcome could not be written): it
    #: stays Running until its lease expires and a reaper returns it to the queue.
    left: OrchestratorError | None = None

    def cancel(self, kind: CancelKind, reason: str) -> None:
        if self.kind is None:
            self.kind, self.reason = kind, reason
        self.scope.cancel()


class JobExecutor(Protocol):
    """What a worker runs each job it holds with (Running, its lease taken)."""

    async def execute(self, job: Job, *, control: JobControl | None = None, worker_id: str | None = None) -> Job: ...


class ExecuteAnalysisJobUseCase:
    def __init__(
        self,
        workflow: JobWorkflow,
        registry: ModuleRegistry,
        telemetry: JobTelemetry,
        *,
        module_concurrency: int = 8,
        clock: Callable[[], int] = now_ns,
        analysis: AnalysisConfig | None = None,
        finalize_retry_seconds: float = 30.0,
        abandon_seconds: float = 5.0,
    ) -> None:
        self._workflow = workflow
        #: How long a module that ignores its cancellation is waited for, then abandoned.
        self._abandon_seconds = abandon_seconds
        self._finalize_retry_seconds = finalize_retry_seconds
        self._registry = registry
        self._telemetry = telemetry
        self._module_concurrency = module_concurrency
        self._clock = clock
        self._analysis = analysis or AnalysisConfig()
        self._runner: BatchRunner | None = None
        self._progress_listeners: list[ProgressListener] = []

    def add_progress_listener(self, listener: ProgressListener) -> Callable[[], None]:
        """Call ``listener(ModuleProgress)`` with every module's progress (throttled, in
        the event loop's thread; it must not block). Returns the function that removes it."""
        self._progress_listeners.append(listener)
        return lambda: self._progress_listeners.remove(listener)

    def _batch_runner(self) -> BatchRunner:
        # One pool for every job of this process (built lazily: most tests never need it).
        if self._runner is None:
            self._runner = self._analysis.runner()
        return self._runner

    async def aclose(self) -> None:
        """Stop the worker processes of module work (the app does, on its way out)."""
        if self._runner is not None:
            await self._runner.aclose()

    @instrument("usecase.execute_job", fields=lambda self, job, **_: job.log_fields(), level=logging.DEBUG)
    async def execute(self, job: Job, *, control: JobControl | None = None, worker_id: str | None = None) -> Job:
        """Run a Running job's modules and move it to its terminal status.

        Returns the job as stored afterwards. When the worker lost the job's lease,
        nothing is written and the job is returned unchanged.
        """
        if job.status is not JobStatus.RUNNING:
            raise TransitionConflict(job.id, JobStatus.RUNNING, job.status, JobStatus.COMPLETED)
        control = control or JobControl()
        missing = [name for name in job.modules if name not in self._registry]
        if missing:
            return await self._fail_unavailable(job, missing, worker_id)
        with self._telemetry.phase(
            job, SpanName.EXECUTE, attempt=job.attempt, worker_id=worker_id or "", module_count=len(job.modules)
        ):
            results = await self._fan_out(job, control)
        return await self._finalize(job, results, control, worker_id)

    async def _fail_unavailable(self, job: Job, missing: list[str], worker_id: str | None) -> Job:
        """The job names modules this worker cannot load (installed where the job was
        created, not here): fail it at once with its own category, naming the modules and
        the worker, instead of letting the fan-out crash."""
        names = ", ".join(repr(m) for m in missing)
        reason = (
            f"module{'s' if len(missing) > 1 else ''} {names} not available on worker {worker_id or 'this process'} "
            f"(it has: {', '.join(self._registry.names()) or 'none'})"
        )
        # The execute span says why (its error), and ends before the terminal transition
        # emits the root span: no child outlives the root.
        with self._telemetry.phase(
            job, SpanName.EXECUTE, attempt=job.attempt, worker_id=worker_id or "", module_count=len(job.modules)
        ) as span:
            span.set_status(trace.Status(trace.StatusCode.ERROR, reason))
            span.set_attribute(Attr.ERROR_TYPE, str(ErrorCategory.MODULE_UNAVAILABLE))
        with anyio.CancelScope(shield=True):
            final = await self._workflow.transition(
                job,
                JobStatus.FAILED,
                reason=reason,
                error_category=ErrorCategory.MODULE_UNAVAILABLE,
                error_phase=Phase.EXECUTE,
                results=(),
                worker_id=worker_id,
            )
        return final

    # -- fan-out ----------------------------------------------------------------------

    async def _fan_out(self, job: Job, control: JobControl) -> tuple[ModuleResult, ...]:
        total = len(job.modules)
        results: dict[str, ModuleResult] = {}
        limit = job.options.concurrency or self._module_concurrency
        # A limiter only when it can hold a module back: one that never fills costs an
        # acquire, a release and their checkpoints per module for nothing.
        limiter = anyio.CapacityLimiter(limit) if limit < total else _UNLIMITED
        fail_fast = job.options.failure_policy is FailurePolicy.FAIL_FAST

        def counts() -> tuple[int, int, int]:
            done = sum(1 for r in results.values() if r.outcome is ModuleOutcome.OK)
            failed = sum(1 for r in results.values() if r.outcome.failed)
            cancelled = sum(1 for r in results.values() if r.outcome is ModuleOutcome.CANCELLED)
            return done, failed, cancelled

        def on_result(result: ModuleResult) -> None:
            results[result.module] = result
            done, failed, cancelled = counts()
            self._telemetry.fanout(job, done=done, failed=failed, cancelled=cancelled, total=total, final=False)
            if fail_fast and result.outcome.failed and fan_out_scope is not None:
                fan_out_scope.cancel()

        analysis = JobAnalysis(job, self._analysis, self._batch_runner(), self._telemetry, self._progress_listeners)
        # What fail-fast cancels: the other modules (a job of one has none left to stop).
        fan_out_scope: anyio.CancelScope | None = None
        with control.scope:
            async with analysis:
                if total == 1:
                    # One module is waited for in the job's own task: a task group would
                    # only add a task, its handle and their cancel scopes.
                    await self._run_module(job, job.modules[0], limiter, on_result, analysis)
                else:
                    async with anyio.create_task_group() as tg:
                        fan_out_scope = tg.cancel_scope
                        for name in job.modules:
                            tg.start_soon(
                                self._run_module, job, name, limiter, on_result, analysis, name=f"module:{name}"
                            )
        for name in job.modules:  # modules cancelled before they started
            if name not in results:
                results[name] = self._not_started(job, name)
        done, failed, cancelled = counts()
        self._telemetry.fanout(job, done=done, failed=failed, cancelled=cancelled, total=total, final=True)
        return tuple(results[name] for name in job.modules)

    async def _run_module(
        self,
        job: Job,
        name: str,
        limiter: anyio.CapacityLimiter | contextlib.nullcontext[None],
        on_result: Callable[[ModuleResult], None],
        analysis: JobAnalysis,
    ) -> None:
        module = self._registry.get(name)
        async with limiter:
            with context.bound(module=name):
                span = self._telemetry.module_started(job, name, module.version, module.expected_runtime)
                ctx = analysis.context(name, span)
                started_ns, started = self._clock(), time.perf_counter()
                outcome, error = ModuleOutcome.OK, None
                summary: dict[str, Any] = {}
                exc: BaseException | None = None
                interrupted: BaseException | None = None
                try:
                    # In a task of its own: one that ignores its cancellation can be abandoned.
                    run = _ModuleRun(module, ctx, analysis, span, job)
                    try:
                        await run.finish(self._abandon_seconds)
                    except BaseException as cancelled:  # noqa: BLE001 - raised again below
                        # This task is being cancelled (the job's cancel, a fail-fast, a
                        # shutdown): the module was asked to stop too, and waited for.
                        interrupted = cancelled
                    outcome, summary, error, exc = run.outcome(
                        lambda: _timed_out(analysis, module), interrupted=interrupted is not None
                    )
                except Exception as failed:  # noqa: BLE001 - its budget could not be set, say: this module's panic
                    outcome, error, exc = ModuleOutcome.PANIC, _panic(failed), failed
                finally:
                    if outcome is not ModuleOutcome.OK:
                        ctx.cancel()  # stops the module's worker threads
                    elapsed = time.perf_counter() - started
                    budget = analysis.finish(module, ctx, span)
                    self._telemetry.module_expected_runtime(name, budget.expected_s)
                    result = _result(module, job, outcome, started_ns, elapsed, summary, error, exc, budget)
                    self._telemetry.module_finished(job, span, result, exc)
                    on_result(result)
                if interrupted is not None:
                    raise interrupted

    def _not_started(self, job: Job, name: str) -> ModuleResult:
        module = self._registry.get(name)
        reason = "cancelled before it started"
        budget = Budget(module.timeout, module.expected_runtime)
        return _result(module, job, ModuleOutcome.CANCELLED, self._clock(), 0.0, {}, reason, None, budget)

    # -- finalize ---------------------------------------------------------------------

    async def _finalize(
        self, job: Job, results: tuple[ModuleResult, ...], control: JobControl, worker_id: str | None
    ) -> Job:
        if control.kind is CancelKind.LEASE_LOST:
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.LEASE_LOST,
                "lease lost: another worker owns this job now; results discarded",
                reason=control.reason,
                attempt=job.attempt,
            )
            return job
        target, reason, category = _verdict(results, control)
        with self._telemetry.phase(job, SpanName.FINALIZE) as span:
            span.set_attribute(Attr.STATUS_TO, str(target))
            retry = _Retry(self._finalize_retry_seconds)
            failure: OrchestratorError
            while True:
                try:
                    with anyio.CancelScope(shield=True):
                        final = await self._workflow.transition(
                            job,
                            target,
                            reason=reason,
                            error_category=category,
                            error_phase=Phase.EXECUTE if category else None,
                            results=results,
                            worker_id=worker_id,
                        )
                    return final
                except TransitionConflict:
                    raise  # someone else moved it (a reaper after our lease expired): theirs stands
                except PersistenceError as exc:
                    # The store is unreachable for now: the results are computed, so keep
                    # trying (the attempt fences off a stale write if the lease is taken
                    # over meanwhile); past the budget, leave the job to lease recovery.
                    if not exc.transient:
                        failure = exc
                        break
                    if not await retry.wait():
                        raise
                except OrchestratorError as exc:
                    failure = exc
                    break
            with anyio.CancelScope(shield=True):
                final = await self._fail_finalize(job, failure, results, worker_id)
        return final

    async def _fail_finalize(
        self, job: Job, exc: OrchestratorError, results: tuple[ModuleResult, ...], worker_id: str | None
    ) -> Job:
        """The terminal write failed (e.g. results the store refused): fail the job with
        the error's category in the finalize phase, without the results."""
        category = exc.category if exc.category is not ErrorCategory.INTERNAL else ErrorCategory.PERSISTENCE
        # Written for people: the error's category and id, never its text (a database's
        # message may quote the data it refused, or name the server).
        error_id = getattr(exc, "error_id", None) or new_error_id()
        return await self._workflow.transition(
            job,
            JobStatus.FAILED,
            reason=f"finalize failed: the results could not be stored ({category} error, error id {error_id})",
            error_category=category,
            error_phase=Phase.FINALIZE,
            results=tuple(_strip(r) for r in results),
            worker_id=worker_id,
        )


class _Retry:
    """Waits between attempts with exponential backoff, within a total budget."""

    def __init__(self, budget_seconds: float, *, first: float = 0.1, cap: float = 5.0) -> None:
        self._deadline = time.monotonic() + budget_seconds
        self._delay, self._cap = first, cap

    async def wait(self) -> bool:
        """Sleep before the next attempt; False when the budget is spent."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            return False
        await anyio.sleep(min(self._delay, left))
        self._delay = min(self._delay * 2, self._cap)
        return True


def _verdict(results: tuple[ModuleResult, ...], control: JobControl) -> tuple[JobStatus, str, ErrorCategory | None]:
    if control.kind is CancelKind.USER:
        return JobStatus.CANCELLED, control.reason or "cancelled", ErrorCategory.CANCELLED
    if control.kind is CancelKind.SHUTDOWN:
        return JobStatus.QUEUED, control.reason or "worker_shutdown", None
    failed = sorted((r for r in results if r.outcome.failed), key=lambda r: r.started_ns + r.duration_ms * 1e6)
    overruns = [r.module for r in results if r.overran and r.outcome is ModuleOutcome.OK]
    if failed:
        detail = "; ".join(f"{r.module} ({r.outcome.category}): {r.error}" for r in failed)
        category = failed[0].outcome.category
        return JobStatus.FAILED, f"{len(failed)} of {len(results)} modules failed: {detail}", category
    reason = f"all {len(results)} modules completed" if len(results) != 1 else "its module completed"
    if overruns:
        reason += f"; {', '.join(overruns)} exceeded expected runtime"
    return JobStatus.COMPLETED, reason, None


def _result(
    module: AnalysisModule,
    job: Job,
    outcome: ModuleOutcome,
    started_ns: int,
    seconds: float,
    summary: dict[str, Any],
    error: str | None,
    exc: BaseException | None,
    budget: Budget,
) -> ModuleResult:
    return ModuleResult(
        module=module.name,
        version=module.version,
        outcome=outcome,
        started_ns=started_ns,
        duration_ms=round(seconds * 1000, 3),
        expected_ms=budget.expected_s * 1000,
        timeout_ms=budget.timeout_s * 1000,
        attempt=job.attempt,
        summary=summary,
        error=error,
        error_type=type(exc).__name__ if exc is not None else None,
    )


#: The "limiter" of a job whose modules all fit its concurrency (reentrant: one for all).
_UNLIMITED: contextlib.nullcontext[None] = contextlib.nullcontext()

_MAX_SUMMARY_BYTES = 256 * 1024


def _timed_out(analysis: JobAnalysis, module: AnalysisModule) -> str:
    return f"exceeded its {analysis.budgets.current(module).timeout_s:g} s timeout"


#: Modules abandoned by this process that are still running (a strong reference each: the
#: event loop keeps only weak ones).
_abandoned_runs: set[_ModuleRun] = set()

#: The module runs in progress by the frame of their coroutine: which module's code holds
#: the event loop can be told from the loop thread's stack (see :func:`module_holding`).
_runs_by_frame: dict[FrameType, _ModuleRun] = {}


def abandoned_count() -> int:
    """How many modules this process abandoned are still running."""
    return len(abandoned_modules()) if _abandoned_runs else 0


def abandoned_modules() -> list[str]:
    """The modules this process abandoned that are still running, as ``job <id> module <name>``."""
    for run in [run for run in _abandoned_runs if run.task.get_loop().is_closed()]:
        _abandoned_runs.discard(run)  # its event loop is gone (an earlier command of this process)
    return sorted(f"job {run.job_id} module {run.name}" for run in _abandoned_runs)


def module_holding(frame: FrameType | None) -> str | None:
    """The module whose code runs at ``frame`` (a thread's current frame, from another
    thread: the stall monitor's), as ``module <name> of job <id>``; None when none does."""
    while frame is not None:
        run = _runs_by_frame.get(frame)
        if run is not None:
            return f"module {run.name} of job {run.job_id}"
        frame = frame.f_back
    return None


def _abandoned(seconds: float) -> str:
    return f"it ignored the cancellation for {seconds:g} s and was abandoned, still running in the worker"


class _ModuleRun:
    """One module's ``run`` in an asyncio task of its own, under its deadline.

    The job's task waits for it (:meth:`finish`). A module that ignores its cancellation,
    its timeout's or its job's, for ``grace`` seconds is abandoned: its job goes on without
    it, and the task is left to end whenever it does (logged then). Everything the module
    raises is kept (``error``), never raised in the task: asyncio lets ``KeyboardInterrupt``
    and ``SystemExit`` out of a task into the event loop, which would stop the worker."""

    __slots__ = (
        "_frame",
        "_grace_ends",
        "abandoned",
        "deadline",
        "error",
        "grace",
        "job_id",
        "name",
        "started",
        "summary",
        "task",
    )

    def __init__(
        self, module: AnalysisModule, ctx: ModuleContext, analysis: JobAnalysis, span: trace.Span, job: Job
    ) -> None:
        self.name, self.job_id = module.name, job.id
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.abandoned = False
        self.grace = 0.0
        self._grace_ends: float | None = None
        self.started = time.perf_counter()
        # The deadline is set here, in the job's task, so that it waits for the module
        # knowing it (the budget only moves it later, once the job's files are walked).
        self.deadline = anyio.CancelScope()
        analysis.start(module, self.deadline, ctx)
        running = cast("CoroutineType[Any, Any, None]", self._run(module, ctx, span))
        frame = running.cr_frame
        assert frame is not None  # not started yet, so not finished either
        self._frame = frame
        _runs_by_frame[frame] = self
        # The context (the module's span, the log fields) is the caller's, copied.
        self.task = asyncio.get_running_loop().create_task(running, name=f"module:{module.name}:{job.id}")

    async def _run(self, module: AnalysisModule, ctx: ModuleContext, span: trace.Span) -> None:
        try:
            # A deadline, not fail_after: a TimeoutError the module's own code raises (a
            # network call) is a panic, not the hard timeout.
            with as_current(span), self.deadline:
                self.summary = _json_summary(await module.run(ctx))
        except BaseException as exc:  # noqa: BLE001 - the job's task decides what it was
            self.error = exc

    async def finish(self, grace: float) -> None:
        """Wait for the module to end, or abandon it ``grace`` seconds after its deadline.
        When this task is cancelled, the module is cancelled too, and waited for as long
        (the rest of the grace if it had begun)."""
        self.grace = grace
        try:
            while not self.task.done():
                now, due = anyio.current_time(), self.deadline.deadline
                if self.deadline.cancel_called or now >= due:
                    self.deadline.cancel()
                    await self._grace()
                    return
                await asyncio.wait((self.task,), timeout=None if due == math.inf else due - now)
        except BaseException:
            self.deadline.cancel()
            with anyio.CancelScope(shield=True):
                await self._grace()
            raise
        finally:
            if self.task.done():
                _runs_by_frame.pop(self._frame, None)

    async def _grace(self) -> None:
        if self._grace_ends is None:
            self._grace_ends = anyio.current_time() + self.grace
        if not self.task.done():
            await asyncio.wait((self.task,), timeout=max(0.0, self._grace_ends - anyio.current_time()))
        if self.task.done() or self.abandoned:
            return
        self.abandoned = True
        _abandoned_runs.add(self)
        self.task.add_done_callback(self._ended)
        logs.event(
            log,
            logging.WARNING,
            OperationEvent.MODULE_ABANDONED,
            f"module {self.name}: {_abandoned(self.grace)}; its job goes on without it",
            module=self.name,
            job_id=self.job_id,
            seconds=self.grace,
        )

    def outcome(
        self, timeout: Callable[[], str], *, interrupted: bool
    ) -> tuple[ModuleOutcome, dict[str, Any], str | None, BaseException | None]:
        """(outcome, summary, error, exception) of the run once :meth:`finish` is done.
        ``interrupted``: the job's task was cancelled (and the module with it); ``timeout()``
        says which timeout it exceeded."""
        deadline, error = self.deadline, self.error
        if self.abandoned:
            if interrupted:
                return ModuleOutcome.CANCELLED, {}, f"cancelled ({_abandoned(self.grace)})", None
            reason = f"{timeout()} ({_abandoned(self.grace)})"
            return ModuleOutcome.TIMEOUT, {}, reason, TimeoutError(reason)
        if interrupted:
            if deadline.cancelled_caught or (error is not None and _is_cancellation(error)):
                return ModuleOutcome.CANCELLED, {}, "cancelled", None
            # It answered its job's cancellation with a result or an error of its own: kept.
        elif deadline.cancel_called:  # its deadline passed
            timed_out = timeout()
            if error is not None:
                # Its timeout's cancellation, turned into an error of its own.
                reason = f"{timed_out} (it raised {type(error).__name__} when cancelled)"
            elif not deadline.cancelled_caught:  # it swallowed the cancellation
                late = time.perf_counter() - self.started
                reason = f"{timed_out} (it ignored the cancellation and returned after {late:.1f} s)"
            else:
                reason = timed_out
            return ModuleOutcome.TIMEOUT, {}, reason, TimeoutError(reason)
        if isinstance(error, ModuleError):
            return ModuleOutcome.ERROR, {}, error.message, error
        if error is not None:
            # Anything else the module raised is a panic: an exception, SystemExit,
            # KeyboardInterrupt, GeneratorExit, a group, a cancellation nobody asked for (it
            # took the worker down). The reason names the exception's type only: its message
            # may quote the analysed data. The traceback goes to the worker's log, at the source.
            return ModuleOutcome.PANIC, {}, _panic(error), error
        return ModuleOutcome.OK, self.summary, None, None

    def _ended(self, task: asyncio.Task[None]) -> None:
        _abandoned_runs.discard(self)
        _runs_by_frame.pop(self._frame, None)
        how = "" if self.error is None else f" with {type(self.error).__name__}"
        logs.event(
            log,
            logging.INFO,
            OperationEvent.MODULE_ABANDONED,
            f"abandoned module {self.name} ended{how} after {time.perf_counter() - self.started:.1f} s",
            module=self.name,
            job_id=self.job_id,
            ended=True,
            error_type=type(self.error).__name__ if self.error is not None else None,
        )


def _panic(exc: BaseException) -> str:
    return f"{type(exc).__name__} (a panic; error id {new_error_id()}, details in the worker log)"


def _is_cancellation(exc: BaseException) -> bool:
    """A cancellation, or a group of nothing else (a module's own task group cancelled)."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[1] is None
    return isinstance(exc, cancelled)


def _json_summary(value: object) -> dict[str, Any]:
    """A module's summary, checked: a JSON object of bounded size, or a ModuleError."""
    if not isinstance(value, dict):
        raise ModuleError(f"returned {type(value).__name__}, not a JSON object")
    if _larger_than(value, _MAX_SUMMARY_BYTES):
        # Before it is copied and encoded: a 200 MB string took 676 MB to be refused.
        raise ModuleError(f"returned a summary of more than {_MAX_SUMMARY_BYTES} bytes (limit {_MAX_SUMMARY_BYTES})")
    try:
        # The canonical form the store keeps: NaN and infinities as strings, undecodable
        # file names and NUL as escapes, nesting cut at a bounded depth.
        summary: dict[str, Any] = canonical_json(value, strict=True)
        encoded = json.dumps(summary, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ModuleError(f"returned a summary that is not JSON-serialisable: {exc}") from None
    if len(encoded) > _MAX_SUMMARY_BYTES:
        raise ModuleError(f"returned a summary of {len(encoded)} bytes (limit {_MAX_SUMMARY_BYTES})")
    return summary


_END = object()


def _larger_than(value: object, limit: int) -> bool:
    """Whether ``value`` encoded as JSON certainly takes more than ``limit`` characters:
    a lower bound of its size (each text's length, one character for anything else),
    counted only until it passes ``limit``, without recursion and without copying."""
    if not value:
        return False  # (an empty summary: most modules that only check something)
    size = 0
    pending: list[tuple[Iterator[object], int]] = [(iter((value,)), 0)]
    while pending:
        items, depth = pending[-1]
        item = next(items, _END)
        if item is _END:
            pending.pop()
            continue
        size += 1  # a digit, a quote, a bracket or a separator at least
        if isinstance(item, str):
            size += len(item)
        elif depth < MAX_DEPTH and isinstance(item, Mapping):  # deeper, it is cut when stored
            pending.append((itertools.chain.from_iterable(item.items()), depth + 1))
        elif depth < MAX_DEPTH and isinstance(item, (list, tuple)):
            pending.append((iter(item), depth + 1))
        if size > limit:
            return True
    return False


def _strip(result: ModuleResult) -> ModuleResult:
    return replace(result, summary={"dropped": "summary could not be stored"})
