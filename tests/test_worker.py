"""The worker on a shared SQLite file: several workers drain one queue without running a
job twice, graceful shutdown requeues, expired leases are recovered, and a cancel made
through another store instance reaches a running job."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import pytest

from orchestrator.bootstrap import App, open_app
from orchestrator.domain import ErrorCategory, Job, JobStatus, ModuleOutcome, now_ns
from orchestrator.job_queue import Worker
from orchestrator.modules.base import BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings

pytestmark = pytest.mark.anyio


class CountingModule(BaseModule):
    """Counts its executions per job id in a counter shared by every app of a test."""

    name: ClassVar[str] = "count"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 5.0

    def __init__(self, counter: Counter[str], seconds: float = 0.01) -> None:
        self.counter = counter
        self.seconds = seconds

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.counter[context.job_id] += 1
        await anyio.sleep(self.seconds)
        return {"attempt": context.attempt}


class QuickModule(BaseModule):
    name: ClassVar[str] = "quick"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        return {"ok": True}


class SlowModule(BaseModule):
    """Sleeps 5 s; counts its starts per job id."""

    name: ClassVar[str] = "slow"
    expected_runtime: ClassVar[float] = 10.0
    timeout: ClassVar[float] = 30.0

    def __init__(self, started: Counter[str]) -> None:
        self.started = started

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.started[context.job_id] += 1
        await anyio.sleep(5)
        return {}


class GateModule(BaseModule):
    """Runs until the test opens its gate; says when it started."""

    name: ClassVar[str] = "gate"
    expected_runtime: ClassVar[float] = 10.0
    timeout: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.entered.set()
        await self.gate.wait()
        return {}


class Shared:
    """Module instances shared by the apps of one test, with their counters."""

    def __init__(self, count_seconds: float = 0.01) -> None:
        self.executions: Counter[str] = Counter()
        self.slow_starts: Counter[str] = Counter()
        self.modules = [CountingModule(self.executions, count_seconds), QuickModule(), SlowModule(self.slow_starts)]

    def registry(self) -> ModuleRegistry:
        return ModuleRegistry(self.modules)


@asynccontextmanager
async def open_apps(tmp_path: Path, shared: Shared, count: int, **settings: Any) -> AsyncIterator[list[App]]:
    """``count`` apps, each with its own SQLiteJobStore, on the same database file."""
    defaults: dict[str, Any] = {"poll_seconds": 0.05, "cancel_poll_seconds": 0.1}
    config = Settings(data_dir=tmp_path / "data", **{**defaults, **settings})
    async with AsyncExitStack() as stack:
        apps = [await stack.enter_async_context(open_app(config, registry=shared.registry())) for _ in range(count)]
        assert len({id(app.store) for app in apps}) == count
        yield apps


def worker_ahead(app: App, worker_id: str, *, seconds: float) -> Worker:
    """A worker of ``app`` whose clock runs ``seconds`` ahead: every lease looks that much
    older to its reaper (instead of sleeping until it expires)."""
    config = app.worker().config
    ahead = int(seconds * 1e9)
    return Worker(app.workflow, app.execute, app.telemetry, config, worker_id=worker_id, clock=lambda: now_ns() + ahead)


async def create(app: App, source: Path, modules: list[str]) -> Job:
    return await app.create.execute({"project_id": "p", "source": str(source), "modules": modules})


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float, step: float = 0.02) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(step)


async def status_is(app: App, job_id: str, *statuses: JobStatus) -> bool:
    return (await app.store.get(job_id)).status in statuses


class Running:
    """A worker running in a task group, and whether its ``run`` has returned."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.returned = anyio.Event()

    async def _run(self) -> None:
        await self.worker.run()
        self.returned.set()

    def start(self, tg: anyio.abc.TaskGroup) -> Running:
        tg.start_soon(self._run, name=f"worker:{self.worker.worker_id}")
        return self

    async def stop(self, timeout: float = 3.0) -> float:
        """Stop the worker; the seconds it took to return."""
        started = time.perf_counter()
        self.worker.stop()
        with anyio.fail_after(timeout):
            await self.returned.wait()
        return time.perf_counter() - started


# --- many workers, one queue -------------------------------------------------------------------


async def test_two_workers_on_one_sqlite_file_complete_every_job_exactly_once(tmp_path: Path) -> None:
    shared = Shared(count_seconds=0.02)
    async with open_apps(tmp_path, shared, 2, concurrency=4) as (a, b):
        jobs = [await create(a if i % 2 else b, tmp_path, ["count", "quick"]) for i in range(40)]
        ids = [job.id for job in jobs]

        async def all_done() -> bool:
            return await a.store.queue_depth() == 0 and all(
                [await status_is(a, job_id, JobStatus.COMPLETED) for job_id in ids]
            )

        async with anyio.create_task_group() as tg:
            wa = Running(a.worker(worker_id="wa")).start(tg)
            wb = Running(b.worker(worker_id="wb")).start(tg)
            await wait_until(all_done, timeout=15, step=0.05)
            await wa.stop()
            await wb.stop()

        assert shared.executions == Counter(dict.fromkeys(ids, 1)), "a job ran twice (or never)"
        assert wa.worker.jobs_run + wb.worker.jobs_run == 40
        assert wa.worker.jobs_run > 0
        assert wb.worker.jobs_run > 0
        ran_by: Counter[str] = Counter()
        for job_id in ids:
            final = await b.store.get(job_id)
            assert (final.status, final.attempt) == (JobStatus.COMPLETED, 1)
            assert [r.outcome for r in final.results] == [ModuleOutcome.OK, ModuleOutcome.OK]
            history = await b.store.history(job_id)
            pairs = [(e.status_from, e.status_to) for e in history]
            assert pairs == [
                (None, JobStatus.PENDING),
                (JobStatus.PENDING, JobStatus.QUEUED),
                (JobStatus.QUEUED, JobStatus.RUNNING),
                (JobStatus.RUNNING, JobStatus.COMPLETED),
            ]
            assert pairs.count((JobStatus.QUEUED, JobStatus.RUNNING)) == 1
            assert pairs.count((JobStatus.RUNNING, JobStatus.COMPLETED)) == 1
            started, finished = history[2], history[3]
            assert started.worker_id is not None
            assert started.worker_id == finished.worker_id in ("wa", "wb")
            ran_by[started.worker_id] += 1
        assert ran_by == Counter(wa=wa.worker.jobs_run, wb=wb.worker.jobs_run)


# --- shutdown ----------------------------------------------------------------------------------


async def test_graceful_shutdown_requeues_a_job_that_outlives_the_grace_period(tmp_path: Path) -> None:
    shared = Shared()
    async with open_apps(tmp_path, shared, 1, shutdown_grace_seconds=0.2) as (app,):
        job = await create(app, tmp_path, ["slow"])
        async with anyio.create_task_group() as tg:
            running = Running(app.worker(worker_id="w-shutdown")).start(tg)
            await wait_until(lambda: _started(shared, job.id), timeout=3)
            took = await running.stop(timeout=30)

        assert 0.2 <= took < 4.0  # the grace, then cut: not the 5 s slow sleeps (generous: a loaded machine)
        final = await app.store.get(job.id)
        assert final.status is JobStatus.QUEUED
        assert (final.reason, final.attempt) == ("worker_shutdown", 2)
        assert (final.lease_owner, final.lease_expires_ns) == (None, None)
        last = (await app.store.history(job.id))[-1]
        assert (last.status_from, last.status_to, last.reason, last.worker_id) == (
            JobStatus.RUNNING,
            JobStatus.QUEUED,
            "worker_shutdown",
            "w-shutdown",
        )
        assert running.worker.in_flight == {}


async def test_graceful_shutdown_lets_a_job_finish_within_the_grace_period(tmp_path: Path) -> None:
    shared = Shared(count_seconds=0.3)
    async with open_apps(tmp_path, shared, 1, shutdown_grace_seconds=10.0) as (app,):
        job = await create(app, tmp_path, ["count"])
        async with anyio.create_task_group() as tg:
            running = Running(app.worker(worker_id="w-grace")).start(tg)
            await wait_until(lambda: _counted(shared, job.id), timeout=3)
            took = await running.stop(timeout=30)

        assert took < 8.0  # the job's end, not the 10 s grace (generous: a loaded machine)
        final = await app.store.get(job.id)
        assert (final.status, final.attempt) == (JobStatus.COMPLETED, 1)


async def _started(shared: Shared, job_id: str) -> bool:
    return shared.slow_starts[job_id] > 0


async def _counted(shared: Shared, job_id: str) -> bool:
    return shared.executions[job_id] > 0


# --- lease expiry ------------------------------------------------------------------------------


async def test_an_expired_lease_is_reaped_back_to_the_queue_and_completed_by_another_worker(tmp_path: Path) -> None:
    shared = Shared()
    async with open_apps(tmp_path, shared, 2) as (a, b):
        job = await create(a, tmp_path, ["count"])
        ghost = await a.workflow.claim("ghost", lease_seconds=30)  # claimed, then the worker "dies"
        assert ghost is not None
        assert (ghost.id, ghost.lease_owner) == (job.id, "ghost")
        assert await worker_ahead(b, "early", seconds=29).reap() == 0  # the lease still holds

        reaper = worker_ahead(b, "reaper", seconds=31)  # ... and has expired
        assert await reaper.reap() == 1
        recovered = await b.store.get(job.id)
        assert recovered.status is JobStatus.QUEUED
        assert (recovered.reason, recovered.attempt) == ("lease_expired", 2)
        assert await reaper.reap() == 0  # nothing left to recover

        async with anyio.create_task_group() as tg:
            running = Running(b.worker(worker_id="rescuer")).start(tg)
            await wait_until(lambda: status_is(b, job.id, JobStatus.COMPLETED), timeout=3)
            await running.stop()

        final = await a.store.get(job.id)
        assert (final.status, final.attempt) == (JobStatus.COMPLETED, 2)
        assert final.results[0].attempt == 2
        assert shared.executions[job.id] == 1
        history = await a.store.history(job.id)
        assert [(e.status_to, e.reason, e.attempt, e.worker_id) for e in history[2:]] == [
            (JobStatus.RUNNING, "claimed", 1, "ghost"),
            (JobStatus.QUEUED, "lease_expired", 2, "reaper"),
            (JobStatus.RUNNING, "claimed", 2, "rescuer"),
            (JobStatus.COMPLETED, final.reason, 2, "rescuer"),
        ]


async def test_a_running_worker_reaps_expired_leases_on_its_own(tmp_path: Path) -> None:
    shared = Shared()
    async with open_apps(tmp_path, shared, 2, reap_seconds=0.1) as (a, b):
        job = await create(a, tmp_path, ["count"])
        assert await a.workflow.claim("ghost", lease_seconds=30) is not None
        async with anyio.create_task_group() as tg:
            running = Running(worker_ahead(b, "rescuer", seconds=31)).start(tg)
            await wait_until(lambda: status_is(b, job.id, JobStatus.COMPLETED), timeout=3)
            await running.stop()
        final = await a.store.get(job.id)
        assert (final.status, final.attempt) == (JobStatus.COMPLETED, 2)
        assert shared.executions[job.id] == 1


async def test_a_lost_worker_fails_the_job_after_max_attempts(tmp_path: Path) -> None:
    shared = Shared()
    async with open_apps(tmp_path, shared, 1, max_attempts=1) as (app,):
        job = await create(app, tmp_path, ["count"])
        assert await app.workflow.claim("ghost", lease_seconds=30) is not None
        assert await worker_ahead(app, "reaper", seconds=31).reap() == 1
        final = await app.store.get(job.id)
        assert final.status is JobStatus.FAILED
        assert final.error_category is ErrorCategory.QUEUE
        assert final.reason is not None
        assert final.reason.startswith("worker_lost")
        assert shared.executions[job.id] == 0


async def test_a_worker_never_reaps_its_own_running_job(tmp_path: Path) -> None:
    """Its own job's lease looks expired to the worker's reaper (its clock runs an hour
    ahead): the job is in flight there, so the reaper leaves it to the heartbeat."""
    shared = Shared()
    gate = GateModule()
    shared.modules.append(gate)
    async with open_apps(tmp_path, shared, 1) as (app,):
        job = await create(app, tmp_path, ["gate"])
        worker = worker_ahead(app, "w-own", seconds=3600)
        async with anyio.create_task_group() as tg:
            running = Running(worker).start(tg)
            with anyio.fail_after(3):
                await gate.entered.wait()
            expired = await app.store.expired(now_ns=now_ns() + 3600 * 10**9)
            assert [j.id for j in expired] == [job.id]  # expired, as the store sees it
            assert await worker.reap() == 0
            current = await app.store.get(job.id)
            assert (current.status, current.attempt, current.lease_owner) == (JobStatus.RUNNING, 1, "w-own")
            gate.gate.set()
            await wait_until(lambda: status_is(app, job.id, JobStatus.COMPLETED), timeout=3)
            await running.stop()
        final = await app.store.get(job.id)
        assert (final.status, final.attempt) == (JobStatus.COMPLETED, 1)
        history = await app.store.history(job.id)
        assert JobStatus.QUEUED not in [e.status_to for e in history[2:]]  # never recovered


# --- cancellation across processes -------------------------------------------------------------


async def test_a_cancel_through_another_store_instance_reaches_the_running_job_quickly(tmp_path: Path) -> None:
    shared = Shared()
    async with open_apps(tmp_path, shared, 2, cancel_poll_seconds=0.1) as (a, b):
        job = await create(a, tmp_path, ["slow", "quick"])
        async with anyio.create_task_group() as tg:
            running = Running(a.worker(worker_id="w-a")).start(tg)
            await wait_until(lambda: _started(shared, job.id), timeout=3)

            requested = time.perf_counter()
            flagged = await b.workflow.cancel(job.id, reason="cancelled from the CLI")
            assert (flagged.status, flagged.cancel_requested) == (JobStatus.RUNNING, "cancelled from the CLI")
            await wait_until(lambda: status_is(b, job.id, JobStatus.CANCELLED), timeout=4)
            took = time.perf_counter() - requested
            assert not running.returned.is_set()
            await running.stop()

        assert took < 4.0  # cut, not the 5 s slow sleeps (generous: a loaded machine)
        final = await b.store.get(job.id)
        assert (final.status, final.reason, final.error_category) == (
            JobStatus.CANCELLED,
            "cancelled from the CLI",
            ErrorCategory.CANCELLED,
        )
        assert final.cancel_requested is None
        outcomes = {r.module: r.outcome for r in final.results}
        assert outcomes == {"slow": ModuleOutcome.CANCELLED, "quick": ModuleOutcome.OK}
        last = (await a.store.history(job.id))[-1]
        assert (last.status_from, last.status_to, last.worker_id) == (JobStatus.RUNNING, JobStatus.CANCELLED, "w-a")


async def test_a_job_whose_internal_failure_cannot_be_written_is_reported_left_not_taken(tmp_path: Path) -> None:
    """An unexpected error in a job, and the store refusing the Failed write (its write
    lock held by another process): the worker leaves the job to lease-expiry recovery and
    says why on the job's control, which `orchestrator run` reports."""
    import sqlite3

    from orchestrator.domain import PersistenceError
    from orchestrator.stores.sqlite import SQLiteJobStore
    from orchestrator.usecases.execute import JobControl

    database = tmp_path / "data" / "jobs.db"
    store = SQLiteJobStore(database, busy_timeout=0.05, lock_retries=0)  # a held lock fails at once
    settings = Settings(data_dir=tmp_path / "data", poll_seconds=0.05)
    holders: list[sqlite3.Connection] = []

    class Crashing:
        async def execute(self, job: Job, *, control: JobControl | None = None, worker_id: str | None = None) -> Job:
            holder = sqlite3.connect(database, isolation_level=None, timeout=10)
            holders.append(holder)
            holder.execute("BEGIN IMMEDIATE")  # the Failed write will find the lock taken
            raise RuntimeError("a bug in the executor")

    source = tmp_path / "src"
    source.mkdir()
    try:
        async with open_app(settings, registry=Shared().registry(), store=store) as app:
            worker = app.worker()
            worker.executor = Crashing()
            job = await create(app, source, ["quick"])
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: worker.run(claim=False))
                await worker.adopt(job)
                control = worker.in_flight[job.id]
                with anyio.fail_after(30):
                    while not control.ended:
                        await anyio.sleep(0.01)
                worker.stop()
            assert isinstance(control.left, PersistenceError)
            assert "database is locked" in control.left.message
            holders[0].execute("ROLLBACK")
            assert (await app.store.get(job.id)).status is JobStatus.RUNNING  # left for recovery
    finally:
        for holder in holders:
            holder.close()
