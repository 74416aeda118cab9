"""The worker: claims jobs with a lease, runs them, keeps the leases alive, recovers
jobs whose worker died, and shuts down gracefully.

Three loops run side by side in one task group:

* **claim**: while a slot is free, claim the oldest Queued job and run it; when the
  queue is empty, wait for a wake-up from the store (or the poll interval);
* **heartbeat**: renew the leases of the jobs in flight, and pass on cancellation
  requests made from any process (``orchestrator cancel``);
* **reaper**: return jobs whose lease expired to the queue (or fail them after too
  many attempts). Every worker runs one; the compare-and-set makes that safe;
* **traces** (when its telemetry confirms exports): write this process's export
  confirmations and rebuild the traces of finished jobs nobody confirmed
  (:class:`~orchestrator.tracing.reconciler.TraceKeeper`; claims make it safe too).

Nothing that happens to one job, and no store outage, stops the worker: failures
are logged once with context and retried with backoff.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from orchestrator.domain import (
    ErrorCategory,
    Job,
    JobStatus,
    LockTimeout,
    OrchestratorError,
    Phase,
    TransitionConflict,
    now_ns,
)
from orchestrator.job_queue.stall import STALL_SECONDS, LoopStallMonitor
from orchestrator.stores import JobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.tracing.reconciler import TraceKeeper
from orchestrator.usecases.execute import (
    CancelKind,
    JobControl,
    JobExecutor,
    abandoned_count,
    abandoned_modules,
    module_holding,
)
from orchestrator.workflow import JobWorkflow
from otel import context, logs
from otel.vocabulary import OperationEvent

__all__ = ["EXIT_RECYCLE", "Worker", "WorkerConfig", "new_worker_id"]

log = logging.getLogger(__name__)


#: The exit status (EX_TEMPFAIL) of a process whose worker stopped itself because too many
#: modules it abandoned still run: its supervisor should start a fresh process.
EXIT_RECYCLE: Final = 75


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    #: Jobs this worker runs at once.
    concurrency: int = 4
    #: Seconds a claimed job stays leased without a heartbeat.
    lease_seconds: float = 30.0
    #: Seconds between lease renewals (a third of the lease by default).
    heartbeat_seconds: float = 10.0
    #: Seconds between checks for cancellation requests of jobs in flight.
    cancel_poll_seconds: float = 0.5
    #: Seconds between claim attempts when no wake-up arrives.
    poll_seconds: float = 1.0
    #: Seconds between reaper passes over expired leases.
    reap_seconds: float = 5.0
    #: Attempts a job gets before a lost worker fails it (reason worker_lost).
    max_attempts: int = 3
    #: Seconds running jobs get to finish on shutdown before they are requeued.
    shutdown_grace_seconds: float = 10.0
    #: The event loop held this long (a module blocking it) is logged, naming what ran.
    loop_stall_seconds: float = STALL_SECONDS
    #: Modules abandoned by this process (they ignored their cancellation) still running
    #: at which the worker stops claiming and stops, for its supervisor to start afresh.
    max_abandoned_modules: int = 8


class Worker:
    def __init__(
        self,
        workflow: JobWorkflow,
        executor: JobExecutor,
        telemetry: JobTelemetry,
        config: WorkerConfig = WorkerConfig(),
        *,
        worker_id: str | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.workflow = workflow
        self.store: JobStore = workflow.store
        self.executor = executor
        self.telemetry = telemetry
        self.config = config
        self.worker_id = worker_id or new_worker_id()
        #: Wall-clock nanoseconds for leases (renewal, expiry); a test moves it instead of sleeping.
        self._clock = clock
        self.in_flight: dict[str, JobControl] = {}
        self._modules_of: dict[str, tuple[str, ...]] = {}
        self.stall = LoopStallMonitor(self._running, holding=module_holding, threshold=config.loop_stall_seconds)
        self.jobs_run = 0
        #: The worker stopped itself: too many modules it abandoned still run (the process
        #: should be replaced: ``worker`` exits with EXIT_RECYCLE).
        self.recycled = False
        #: Claim statements sent, and the jobs they claimed (for benchmarks).
        self.claims = 0
        self.claimed = 0
        #: Confirms this process's trace exports and rebuilds lost traces (None: off).
        self.traces: TraceKeeper | None = None
        self._stop = anyio.Event()
        self._started = anyio.Event()
        self._jobs: anyio.abc.TaskGroup | None = None
        self._adopt_slots = anyio.Semaphore(config.concurrency)
        self._idle = anyio.Event()
        self._idle.set()
        self._outage = logs.RateLimitedLog(10.0)

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, claim: bool = True) -> None:
        """Run until :meth:`stop` is called, then shut down gracefully.

        With ``claim=False`` the worker claims nothing itself and only runs the jobs
        handed to it with :meth:`adopt` (``orchestrator run`` runs exactly its job).
        """
        with context.bound(worker_id=self.worker_id):
            logs.event(
                log,
                logging.INFO,
                OperationEvent.WORKER_START,
                "worker started",
                concurrency=self.config.concurrency,
                store=self.store.backend,
            )
            async with anyio.create_task_group() as jobs, anyio.create_task_group() as loops:
                loops.start_soon(self._heartbeat_loop)
                loops.start_soon(self._reaper_loop)
                loops.start_soon(self.stall.run)
                if self.traces is not None:
                    loops.start_soon(self.traces.run)
                self._jobs = jobs
                if claim:
                    loops.start_soon(self._claim_loop, jobs)
                self._started.set()
                await self._stop.wait()
                await self._drain()
                loops.cancel_scope.cancel()
            logs.event(
                log,
                logging.INFO,
                OperationEvent.WORKER_STOP,
                "worker stopped",
                jobs_run=self.jobs_run,
            )

    def stop(self) -> None:
        """Stop claiming; running jobs get the grace period, then go back to the queue."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stop.is_set()

    async def _drain(self) -> None:
        with anyio.move_on_after(self.config.shutdown_grace_seconds):
            await self._idle.wait()
        for control in list(self.in_flight.values()):
            control.cancel(CancelKind.SHUTDOWN, "worker_shutdown")
        await self._idle.wait()

    # -- claim ------------------------------------------------------------------------

    async def _claim_loop(self, jobs: anyio.abc.TaskGroup) -> None:
        slots = anyio.Semaphore(self.config.concurrency)
        backoff = _Backoff()
        while not self._stop.is_set():
            await slots.acquire()
            if abandoned_count() >= self.config.max_abandoned_modules:
                slots.release()
                self._recycle()
                return
            free = 1 + _take_free(slots)  # claim as many jobs as there are free slots, in one statement
            try:
                claimed = await self.workflow.claim_batch(
                    self.worker_id, lease_seconds=self.config.lease_seconds, limit=free
                )
            except OrchestratorError as exc:
                _release(slots, free)
                await self._store_outage("claim", exc, backoff)
                continue
            backoff.reset()
            self.claims += 1
            self.claimed += len(claimed)
            _release(slots, free - len(claimed))
            for job in claimed:
                self._start(jobs, job, slots)
            if not claimed:
                await self.store.wait_for_work(max_wait=self.config.poll_seconds)

    def _recycle(self) -> None:
        """Too many abandoned modules still run in this process: stop, and say why."""
        self.recycled = True
        limit = self.config.max_abandoned_modules
        logs.event(
            log,
            logging.ERROR,
            OperationEvent.WORKER_RECYCLE,
            f"{abandoned_count()} modules abandoned by this process still run (limit {limit}, "
            "ORCHESTRATOR_MAX_ABANDONED_MODULES): this worker stops claiming and stops, for its supervisor "
            "to start a fresh process",
            abandoned=abandoned_modules(),
        )
        self.stop()

    def _start(self, jobs: anyio.abc.TaskGroup, job: Job, slots: anyio.Semaphore) -> None:
        """Run a Running job in the worker's job task group (its slot already taken)."""
        if self._idle.is_set():
            self._idle = anyio.Event()
        self.in_flight[job.id] = JobControl()
        self._modules_of[job.id] = job.modules
        jobs.start_soon(self._run_job, job, slots, name=f"job:{job.id}")

    def _running(self) -> str:
        """The jobs in flight and their modules (read by the stall monitor's thread)."""
        return ", ".join(
            f"job {job_id} (modules {', '.join(modules)})" for job_id, modules in list(self._modules_of.items())
        )

    async def _run_job(self, job: Job, slots: anyio.Semaphore) -> None:
        control = self.in_flight[job.id]
        self.telemetry.active_jobs(1)
        try:
            with context.bound(**job.log_fields()):
                await self.executor.execute(job, control=control, worker_id=self.worker_id)
        except TransitionConflict:
            pass  # the job moved on without us (recovered or cancelled): logged at the source
        except OrchestratorError as exc:
            # Typed, and logged where it happened (the store is down, say): the job keeps
            # its lease until it expires, then a reaper returns it to the queue.
            control.left = exc
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.ERROR,
                f"job {job.id} left to lease-expiry recovery: {exc.message}",
                error_category=str(exc.category),
                **job.log_fields(),
            )
        except Exception as exc:  # noqa: BLE001 - one job must never take the worker down
            logs.event(
                log,
                logging.ERROR,
                OperationEvent.ERROR,
                f"job {job.id} failed unexpectedly: {exc}",
                exc_info=exc,
                error_category=str(ErrorCategory.INTERNAL),
                **job.log_fields(),
            )
            control.left = await self._fail_internal(job, exc)
        finally:
            control.ended = True
            self.jobs_run += 1
            self.telemetry.active_jobs(-1)
            del self.in_flight[job.id]
            self._modules_of.pop(job.id, None)
            slots.release()
            if not self.in_flight:
                self._idle.set()

    async def _fail_internal(self, job: Job, exc: Exception) -> OrchestratorError | None:
        """Fail the job for an unexpected error; the store's error if that could not be
        written (the job is then left to lease-expiry recovery)."""
        with anyio.CancelScope(shield=True):
            try:
                current = await self.store.get(job.id)
                if current.status is JobStatus.RUNNING and current.attempt == job.attempt:
                    await self.workflow.transition(
                        current,
                        JobStatus.FAILED,
                        reason=f"internal error: {exc}",
                        error_category=ErrorCategory.INTERNAL,
                        error_phase=Phase.EXECUTE,
                        worker_id=self.worker_id,
                    )
            except OrchestratorError as failed:
                return failed  # logged at the source; the lease expires and the reaper recovers the job
        return None

    async def adopt(self, job: Job) -> Job:
        """Run a job on this worker under its heartbeat: a Running job already leased to
        this worker (created that way, see :meth:`JobWorkflow.create_started`), or a
        Queued one, started here (Queued -> Running with this worker's lease). Returns it
        Running."""
        await self._started.wait()
        assert self._jobs is not None
        await self._adopt_slots.acquire()
        try:
            if job.status is JobStatus.RUNNING and job.lease_owner == self.worker_id:
                running = job
            else:
                running = await self.workflow.start(
                    job, worker_id=self.worker_id, lease_seconds=self.config.lease_seconds
                )
        except BaseException:
            self._adopt_slots.release()
            raise
        self._start(self._jobs, running, self._adopt_slots)
        return running

    # -- heartbeat --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        last_renewal = anyio.current_time()
        backoff = _Backoff()
        while True:
            await anyio.sleep(self.config.cancel_poll_seconds)
            ids = list(self.in_flight)
            if not ids:
                continue
            try:
                for job_id, reason in (await self.store.cancel_requests(ids)).items():
                    if job_id in self.in_flight:
                        self.in_flight[job_id].cancel(CancelKind.USER, reason)
                if anyio.current_time() - last_renewal >= self.config.heartbeat_seconds:
                    await self._renew(ids)
                    last_renewal = anyio.current_time()
                backoff.reset()
            except OrchestratorError as exc:
                await self._store_outage("heartbeat", exc, backoff)

    async def _renew(self, ids: list[str]) -> None:
        now = self._clock()
        expires = now + int(self.config.lease_seconds * 1e9)
        owned = await self.store.renew_leases(ids, worker_id=self.worker_id, expires_ns=expires, now_ns=now)
        for job_id in set(ids) - owned:
            control = self.in_flight.get(job_id)
            if control is not None:
                control.cancel(CancelKind.LEASE_LOST, "lease taken over by another worker")

    # -- reaper -----------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        backoff = _Backoff()
        while True:
            try:
                await self.reap()
                self.telemetry.queue_depth(await self.store.queue_depth())
                backoff.reset()
            except OrchestratorError as exc:
                await self._store_outage("reaper", exc, backoff)
            await anyio.sleep(self.config.reap_seconds)

    async def reap(self) -> int:
        """Recover every job whose lease expired; returns how many this pass moved."""
        moved = 0
        for job in await self.store.expired(now_ns=self._clock()):
            if job.id in self.in_flight:
                continue  # ours and still running: the heartbeat will renew it
            try:
                await self.workflow.recover(job, max_attempts=self.config.max_attempts, worker_id=self.worker_id)
                moved += 1
            except TransitionConflict:
                continue  # another reaper (or the job's own worker) got there first
            except LockTimeout:
                # Its row is locked by another session (logged at the source): the others
                # are recovered now, this one at a later pass.
                continue
        return moved

    # -- degraded paths ---------------------------------------------------------------

    async def _store_outage(self, loop: str, exc: OrchestratorError, backoff: _Backoff) -> None:
        if self._outage.ready():
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.STORE_RETRY,
                f"store unavailable in {loop}; backing off: {exc}",
                operation=f"worker.{loop}",
                error_category=str(exc.category),
                suppressed=self._outage.take_suppressed(),
            )
        await anyio.sleep(backoff.next())


def _take_free(slots: anyio.Semaphore) -> int:
    """Take every slot free right now (without waiting); how many were taken."""
    taken = 0
    while True:
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            return taken
        taken += 1


def _release(slots: anyio.Semaphore, count: int) -> None:
    for _ in range(count):
        slots.release()


class _Backoff:
    def __init__(self, base: float = 0.1, cap: float = 10.0) -> None:
        self._base, self._cap, self._delay = base, cap, base

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self._cap)
        return delay * (0.5 + secrets.randbelow(1000) / 1000)

    def reset(self) -> None:
        self._delay = self._base


async def run_until(worker: Worker, done: Callable[[], Awaitable[bool]], *, check_seconds: float = 0.1) -> None:
    """Run ``worker`` until ``done()`` is true (used by ``run`` and ``demo``)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        # (or until it stopped by itself: too many modules it abandoned still run)
        while not worker.stopping and not await done():  # noqa: ASYNC110 - done() is an async store query
            await anyio.sleep(check_seconds)
        worker.stop()
