"""Terminal transitions of one process are written in groups (orchestrator/stores/grouping.py
and the store core): a lone one is written at once; those arriving while one is in
flight go together in the next write, each with its own compare-and-set, history row,
outbox rows and outcome; one job's failure fails only that job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import psycopg
import pytest
from faults.tcp_proxy import TcpProxy
from pg_helpers import fresh_database, query
from psycopg import sql

from orchestrator.domain import (
    CancelPending,
    IllegalTransition,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    LockTimeout,
    ModuleOutcome,
    ModuleResult,
    PersistenceError,
    TraceContext,
    Transition,
    TransitionConflict,
    now_ns,
)
from orchestrator.stores.base import JobStore
from orchestrator.stores.core import SQLJobStore
from orchestrator.stores.grouping import GroupedWrites
from orchestrator.stores.postgres import PostgresJobStore

pytestmark = pytest.mark.anyio


# -- GroupedWrites --------------------------------------------------------------------------


class Recorder:
    """A write function that records its groups and can be held in flight."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = anyio.Event()
        self.hold = False
        self.entered = anyio.Event()

    async def write(self, items: Sequence[str]) -> list[str | BaseException]:
        self.groups.append(list(items))
        self.entered.set()
        if self.hold:
            await self.release.wait()
        return [ValueError(item) if item.startswith("bad") else f"done {item}" for item in items]


async def test_a_lone_write_is_written_alone() -> None:
    recorder = Recorder()
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    with anyio.fail_after(1):
        assert await writes.submit("a") == "done a"
    assert recorder.groups == [["a"]]


async def test_writes_submitted_in_one_turn_of_the_event_loop_go_together() -> None:
    """Tasks woken together (jobs claimed together end together) write in one group: the
    first waits one turn of the loop before it writes, instead of writing alone and the
    others together after it (two round trips, and the next claims out of step)."""
    recorder = Recorder()
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        results[item] = await writes.submit(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for item in ("a", "b", "c"):
                tg.start_soon(submit, item)
    assert recorder.groups == [["a", "b", "c"]]
    assert results == {"a": "done a", "b": "done b", "c": "done c"}


async def test_a_leader_interrupted_in_its_turn_hands_the_queue_over() -> None:
    """Something other than anyio's cancellation (a native cancel, KeyboardInterrupt)
    raised in the leader's turn of the loop: nothing of it was sent, and the write queued
    behind it is written (it used to wait forever, the queue still marked as writing)."""
    recorder = Recorder()
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    results: dict[str, str] = {}

    async def follower() -> None:
        results["b"] = await writes.submit("b")

    lead = asyncio.get_running_loop().create_task(writes.submit("a"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            await anyio.lowlevel.checkpoint()  # "a" takes its turn, "b" queues behind it
            lead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lead
    assert recorder.groups == [["b"]]
    assert results == {"b": "done b"}


async def test_writes_arriving_while_one_is_in_flight_go_together_next() -> None:
    recorder = Recorder()
    recorder.hold = True
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        results[item] = await writes.submit(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "first")
            await recorder.entered.wait()
            for item in ("b", "c", "d"):
                tg.start_soon(submit, item)
            await anyio.wait_all_tasks_blocked()
            recorder.hold = False
            recorder.release.set()
    assert recorder.groups == [["first"], ["b", "c", "d"]]
    assert results == {"first": "done first", "b": "done b", "c": "done c", "d": "done d"}
    assert (writes.groups, writes.items) == (2, 4)


async def test_each_caller_gets_its_own_outcome() -> None:
    recorder = Recorder()
    recorder.hold = True
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    outcomes: dict[str, object] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await writes.submit(item)
        except ValueError as exc:
            outcomes[item] = f"raised {exc}"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "first")
            await recorder.entered.wait()
            for item in ("ok1", "bad1", "ok2"):
                tg.start_soon(submit, item)
            await anyio.wait_all_tasks_blocked()
            recorder.hold = False
            recorder.release.set()
    assert outcomes == {"first": "done first", "ok1": "done ok1", "bad1": "raised bad1", "ok2": "done ok2"}


async def test_two_writes_with_one_key_never_share_a_group() -> None:
    recorder = Recorder()
    recorder.hold = True
    writes = GroupedWrites(recorder.write, key=lambda item: item.split(":")[0])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writes.submit, "x:0")
            await recorder.entered.wait()
            for item in ("job1:a", "job2:a", "job1:b", "job3:a"):
                tg.start_soon(writes.submit, item)
            await anyio.wait_all_tasks_blocked()
            recorder.hold = False
            recorder.release.set()
    assert recorder.groups == [["x:0"], ["job1:a", "job2:a", "job3:a"], ["job1:b"]]


async def test_a_failing_write_fails_every_caller_of_its_group_and_the_next_group_is_written() -> None:
    calls: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if 1 in items:
            raise RuntimeError("store down")
        return list(items)

    writes = GroupedWrites(write, key=lambda item: item)
    with anyio.fail_after(1), pytest.raises(RuntimeError, match="store down"):
        await writes.submit(1)
    with anyio.fail_after(1):
        assert await writes.submit(2) == 2
    assert calls == [[1], [2]]


async def test_a_caller_cancelled_while_queued_is_never_written() -> None:
    recorder = Recorder()
    recorder.hold = True
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writes.submit, "first")
            await recorder.entered.wait()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await writes.submit("cancelled")
            tg.start_soon(writes.submit, "kept")
            await anyio.wait_all_tasks_blocked()
            recorder.hold = False
            recorder.release.set()
    assert recorder.groups == [["first"], ["kept"]]


async def test_a_group_in_flight_completes_for_every_caller_when_its_leader_is_cancelled() -> None:
    recorder = Recorder()
    recorder.hold = True
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    got: list[str] = []

    async def follower() -> None:
        got.append(await writes.submit("follower"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            leader = anyio.CancelScope()

            async def lead() -> None:
                with leader:
                    await writes.submit("first")

            tg.start_soon(lead)
            await recorder.entered.wait()
            recorder.entered = anyio.Event()
            tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            recorder.release.set()  # the first group returns; the follower leads the next
            await recorder.entered.wait()
            leader.cancel()  # too late to matter: its group was written
    assert recorder.groups == [["first"], ["follower"]]
    assert got == ["done follower"]


# -- the store ------------------------------------------------------------------------------


class RecordingStamps:
    """A RootStamps (the durable-trace ledger's interface) recording each job's outcome."""

    emitter_id = "test-emitter"

    def __init__(self) -> None:
        self.next = 1
        self.jobs: dict[int, str] = {}
        self.outcomes: dict[str, str] = {}

    def begin(self, job_id: str) -> int:
        seq, self.next = self.next, self.next + 1
        self.jobs[seq] = job_id
        return seq

    def committed(self, seq: int, trace_id: str, root_span_id: str) -> None:
        self.outcomes[self.jobs[seq]] = "committed"

    def void(self, seq: int) -> None:
        self.outcomes[self.jobs[seq]] = "void"

    def unknown(self, seq: int) -> None:
        self.outcomes[self.jobs[seq]] = "unknown"


async def running_jobs(store: JobStore, count: int) -> list[Job]:
    """``count`` jobs inserted Running (as ``orchestrator run`` creates its own)."""
    at = now_ns()
    jobs = []
    for i in range(count):
        job = Job.new(
            project_id="proj-group",
            source="/srv/p",
            modules=("a",),
            options=JobOptions(),
            trace=TraceContext.new(),
            created_ns=at + i,
        )
        running = replace(
            job,
            status=JobStatus.RUNNING,
            status_ns=at + i,
            queued_ns=at + i,
            started_ns=at + i,
            reason="claimed",
            worker_id="w-1",
            lease_owner="w-1",
            lease_expires_ns=at + 10**12,
        )
        jobs.append(await store.insert(running))
    return jobs


def finish(job: Job, status: JobStatus = JobStatus.COMPLETED, **fields: object) -> Transition:
    at = now_ns()
    result = ModuleResult(
        module="a",
        version="1",
        outcome=ModuleOutcome.OK,
        started_ns=at,
        duration_ms=0.1,
        expected_ms=1000.0,
        timeout_ms=30000.0,
        attempt=job.attempt,
        summary={"n": job.id},
    )
    values: dict[str, object] = {
        "job_id": job.id,
        "status_from": job.status,
        "status_to": status,
        "reason": f"to {status} ({job.id})",
        "at_ns": at,
        "duration_ms": 1.0,
        "attempt": job.attempt,
        "new_attempt": job.attempt,
        "worker_id": "w-1",
        "results": (result,),
        **fields,
    }
    return Transition(**values)  # type: ignore[arg-type]


async def apply_together(store: JobStore, transitions: Sequence[Transition]) -> dict[str, object]:
    """Apply every transition concurrently (history read back); outcome by job id."""
    outcomes: dict[str, object] = {}

    async def one(t: Transition) -> None:
        try:
            outcomes[t.job_id] = await store.apply_with_history(t)
        except Exception as exc:
            outcomes[t.job_id] = exc

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for t in transitions:
                tg.start_soon(one, t)
    return outcomes


async def test_concurrent_terminal_transitions_are_written_in_fewer_groups(store: JobStore) -> None:
    assert isinstance(store, SQLJobStore)
    jobs = await running_jobs(store, 12)
    before = (store._terminal_writes.groups, store._terminal_writes.items)

    outcomes = await apply_together(store, [finish(job) for job in jobs])

    groups = store._terminal_writes.groups - before[0]
    assert store._terminal_writes.items - before[1] == 12
    assert groups < 12, "nothing was grouped"
    for job in jobs:
        outcome = outcomes[job.id]
        assert isinstance(outcome, tuple), outcome
        stored, history = outcome
        assert stored.status is JobStatus.COMPLETED
        assert stored.reason == f"to completed ({job.id})"
        assert stored.results[0].summary == {"n": job.id}
        # Its own history, read in the same write: created, enqueued, claimed, completed.
        assert [(e.status_from, e.status_to) for e in history] == [
            (None, JobStatus.PENDING),
            (JobStatus.PENDING, JobStatus.QUEUED),
            (JobStatus.QUEUED, JobStatus.RUNNING),
            (JobStatus.RUNNING, JobStatus.COMPLETED),
        ]
        assert {e.job_id for e in history} == {job.id}
        assert history == await store.history(job.id)


async def test_in_one_group_a_conflict_and_a_cancel_request_fail_only_their_jobs(store: JobStore) -> None:
    assert isinstance(store, SQLJobStore)
    stamps = RecordingStamps()
    store.root_stamps = stamps
    jobs = await running_jobs(store, 6)
    moved, flagged = jobs[1], jobs[4]
    # Another process took `moved` over (its attempt changed) and someone asked to cancel `flagged`.
    await store.apply(finish(moved, JobStatus.QUEUED, reason="lease_expired", new_attempt=2, results=None))
    await store.request_cancel(flagged.id, "stop it", requested_by="user", at_ns=now_ns())

    outcomes = await apply_together(store, [finish(job) for job in jobs])

    assert isinstance(outcomes[moved.id], TransitionConflict)
    assert isinstance(outcomes[flagged.id], CancelPending)
    for job in jobs:
        if job.id in (moved.id, flagged.id):
            assert stamps.outcomes[job.id] == "void"
            continue
        outcome = outcomes[job.id]
        assert isinstance(outcome, tuple), outcome
        assert outcome[0].status is JobStatus.COMPLETED
        assert stamps.outcomes[job.id] == "committed"
    assert (await store.get(moved.id)).status is JobStatus.QUEUED
    assert (await store.get(flagged.id)).status is JobStatus.RUNNING  # only Cancelled may end it


async def test_a_transition_the_database_refuses_in_a_group_fails_only_its_job(store: JobStore) -> None:
    assert isinstance(store, SQLJobStore)
    jobs = await running_jobs(store, 5)
    done = jobs[2]
    await store.apply(finish(done))
    completed = await store.get(done.id)
    # Completed -> Failed is not a transition: the schema's triggers refuse it.
    illegal = finish(completed, JobStatus.FAILED)
    others = [finish(job) for job in jobs if job.id != done.id]

    outcomes = await apply_together(store, [*others[:2], illegal, *others[2:]])

    assert isinstance(outcomes[done.id], IllegalTransition)
    assert (await store.get(done.id)).status is JobStatus.COMPLETED
    for t in others:
        outcome = outcomes[t.job_id]
        assert isinstance(outcome, tuple), outcome
        assert outcome[0].status is JobStatus.COMPLETED
        assert [e.status_to for e in outcome[1]][-1] is JobStatus.COMPLETED


async def test_a_job_ends_once_when_two_processes_end_it_at_the_same_time(store: JobStore) -> None:
    jobs = await running_jobs(store, 4)
    first = [finish(job) for job in jobs]
    second = [finish(job, JobStatus.FAILED, reason="worker_lost") for job in jobs]

    outcomes_a: dict[str, object] = {}
    outcomes_b: dict[str, object] = {}

    async def run(transitions: list[Transition], into: dict[str, object]) -> None:
        into.update(await apply_together(store, transitions))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, first, outcomes_a)
        tg.start_soon(run, second, outcomes_b)
    for job in jobs:
        won = [o for o in (outcomes_a[job.id], outcomes_b[job.id]) if isinstance(o, tuple)]
        lost = [o for o in (outcomes_a[job.id], outcomes_b[job.id]) if isinstance(o, TransitionConflict)]
        assert (len(won), len(lost)) == (1, 1)
        history = await store.history(job.id)
        assert [e.status_to for e in history].count(won[0][0].status) == 1
        assert history[-1].status_to is won[0][0].status


# -- a row lock held for good (PostgreSQL) ------------------------------------------------------


@contextmanager
def row_locks(url: str, schema: str, job_ids: Sequence[str]) -> Iterator[int]:
    """Another session locks the jobs' rows (SELECT ... FOR UPDATE) and keeps its
    transaction open, as a forgotten psql session would; yields its backend pid."""
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        locked = conn.execute("SELECT id FROM jobs WHERE id = ANY(%s) FOR UPDATE", (list(job_ids),)).fetchall()
        assert len(locked) == len(job_ids)
        try:
            yield conn.info.backend_pid
        finally:
            conn.rollback()


def blocked_by(url: str, pid: int) -> int:
    """Sessions waiting for a lock that session ``pid`` holds."""
    rows = query(
        url, "SELECT count(*) AS n FROM pg_stat_activity WHERE %(pid)s = ANY(pg_blocking_pids(pid))", {"pid": pid}
    )
    return int(rows[0]["n"])


@asynccontextmanager
async def pg_store(
    url: str, schema: str | None, lock_timeout: float, write_seconds: float | None = None
) -> AsyncIterator[PostgresJobStore]:
    store = PostgresJobStore(url, schema=schema, lock_timeout=lock_timeout, write_seconds=write_seconds)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_transition_behind_a_row_lock_held_for_good_fails_typed_after_the_lock_timeout(
    postgres_url: str, pg_schema: str
) -> None:
    async with pg_store(postgres_url, pg_schema, lock_timeout=1.0) as store:
        (job,) = await running_jobs(store, 1)
        with row_locks(postgres_url, pg_schema, [job.id]) as holder:
            started = time.monotonic()
            with anyio.fail_after(30), pytest.raises(PersistenceError) as raised:
                await store.apply(finish(job))  # behind the lock: it waits, then gives up
            waited = time.monotonic() - started
            assert isinstance(raised.value, LockTimeout)
            assert (raised.value.transient, raised.value.answered) == (True, True)
            assert raised.value.message.startswith(
                f"the postgresql store at {store.target} gave up after waiting 1 s for a lock another session "
                "holds, to apply_transition (error id "
            ), raised.value.message
            assert waited >= 1.0
            # Ended in the server, not only abandoned: nothing waits on the lock now, and
            # the job is as it was (a read is not blocked by a row lock).
            assert blocked_by(postgres_url, holder) == 0
            assert not store.pg._unreachable  # a busy row is not a server gone: full pool waits stay
            assert (await store.get(job.id)).status is JobStatus.RUNNING
        # Once the lock is gone, the same transition is written, once.
        assert (await store.apply(finish(job))).status is JobStatus.COMPLETED
        assert [e.status_to for e in await store.history(job.id)].count(JobStatus.COMPLETED) == 1


@pytest.mark.postgres
async def test_a_group_behind_a_row_lock_is_retried_by_each_caller_at_once_not_one_by_one(
    postgres_url: str, pg_schema: str
) -> None:
    async with pg_store(postgres_url, pg_schema, lock_timeout=2.0) as store:
        jobs = await running_jobs(store, 6)
        most_waiting = 0
        with row_locks(postgres_url, pg_schema, [job.id for job in jobs]) as holder:

            async def watch() -> None:
                nonlocal most_waiting
                while True:
                    most_waiting = max(most_waiting, await anyio.to_thread.run_sync(blocked_by, postgres_url, holder))
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                # The six arrive in one turn of the event loop and go together; once that
                # group is past its deadline, each of the six is retried alone by its own
                # caller, all six at the same time.
                outcomes = await apply_together(store, [finish(job) for job in jobs])
                tg.cancel_scope.cancel()
            assert blocked_by(postgres_url, holder) == 0  # every statement cancelled in the server
        assert most_waiting == 6
        for job in jobs:
            outcome = outcomes[job.id]
            assert isinstance(outcome, PersistenceError), outcome
            assert outcome.transient
            assert "for a lock another session holds, to apply_transition (error id " in outcome.message
            assert (await store.get(job.id)).status is JobStatus.RUNNING
        # Written once the lock is gone.
        again = await apply_together(store, [finish(job) for job in jobs])
        assert all(isinstance(o, tuple) and o[0].status is JobStatus.COMPLETED for o in again.values()), again


@pytest.mark.postgres
async def test_a_transition_to_a_database_that_stops_answering_fails_typed_at_the_client_deadline(
    postgres_url: str,
) -> None:
    with fresh_database(postgres_url) as url, TcpProxy("127.0.0.1", urlsplit(url).port or 5432) as proxy:
        async with pg_store(proxy.url_for(url), None, lock_timeout=30.0, write_seconds=1.5) as store:
            (job,) = await running_jobs(store, 1)
            proxy.stall()  # a network that drops everything: no error, no answer, ever
            started = time.monotonic()
            with anyio.fail_after(60), pytest.raises(PersistenceError) as raised:
                await store.apply(finish(job))
            waited = time.monotonic() - started
            assert (raised.value.transient, raised.value.answered) == (True, False)
            assert raised.value.message.startswith(
                f"the postgresql store at {store.target} did not apply_transition within 1.5 s (the server did "
                "not answer its cancellation either: it may still have been written; error id "
            ), raised.value.message
            assert 1.5 <= waited < 30.0  # the client's deadline, not the server's lock timeout
            proxy.resume()
            # The statement held on the way may still reach the server (its outcome was
            # unknown, as the error said): the job ends at most once, and the store works.
            with anyio.fail_after(30):
                try:
                    current = await store.apply(finish(job))
                except TransitionConflict:  # the held statement landed first
                    current = await store.get(job.id)
            assert current.status is JobStatus.COMPLETED
            assert [e.status_to for e in await store.history(job.id)].count(JobStatus.COMPLETED) == 1


@pytest.mark.postgres
async def test_the_lock_timeout_leaves_migrations_waiting_for_each_other(postgres_url: str, pg_schema: str) -> None:
    # Another process migrating the schema holds the migration lock for longer than the
    # lock timeout: a store opening meanwhile waits for it instead of failing.
    with psycopg.connect(postgres_url, autocommit=True) as migrating:
        migrating.execute("SELECT pg_advisory_lock(8030590385584829554)")
        holder = migrating.info.backend_pid
        store = PostgresJobStore(postgres_url, schema=pg_schema, lock_timeout=0.2)
        opened = anyio.Event()
        failed: list[BaseException] = []

        async def open_store() -> None:
            try:
                await store.open()
            except Exception as exc:
                failed.append(exc)
            opened.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(open_store)
                with anyio.fail_after(30):
                    while not opened.is_set() and blocked_by(postgres_url, holder) == 0:
                        await anyio.sleep(0.02)
                # Five lock timeouts later, it still waits, and has not failed.
                await anyio.sleep(1.0)
                assert not failed, failed
                assert not opened.is_set()
                assert blocked_by(postgres_url, holder) == 1
                migrating.execute("SELECT pg_advisory_unlock(8030590385584829554)")
                with anyio.fail_after(30):
                    await opened.wait()
            assert not failed, failed
        finally:
            await store.close()


@pytest.mark.postgres
async def test_a_transition_past_its_deadline_is_cancelled_in_the_server_and_nothing_is_written(
    postgres_url: str, pg_schema: str
) -> None:
    # The lock timeout is far away; the write's own deadline comes first.
    async with pg_store(postgres_url, pg_schema, lock_timeout=60.0, write_seconds=1.0) as store:
        (job,) = await running_jobs(store, 1)
        with row_locks(postgres_url, pg_schema, [job.id]) as holder:
            with anyio.fail_after(30), pytest.raises(PersistenceError) as raised:
                await store.apply(finish(job))
            assert (raised.value.transient, raised.value.answered) == (True, True)
            assert raised.value.message.startswith(
                f"the postgresql store at {store.target} did not apply_transition within 1 s "
                "(cancelled in the server, nothing written; error id "
            ), raised.value.message
            assert blocked_by(postgres_url, holder) == 0  # the server ended it
        assert (await store.get(job.id)).status is JobStatus.RUNNING
        assert (await store.apply(finish(job))).status is JobStatus.COMPLETED
        assert [e.status_to for e in await store.history(job.id)].count(JobStatus.COMPLETED) == 1


@pytest.mark.postgres
async def test_a_cancellation_that_fails_unexpectedly_still_abandons_the_statement_at_its_deadline(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The request to cancel a statement past its deadline failing with an error psycopg
    does not raise (a bug, an OSError): the statement ran on to its own end (a held lock's
    60 s) and that error came out instead of the store's typed one."""

    async def broken(self: object, *, timeout: float = 30.0) -> None:
        raise RuntimeError("the cancel request broke")

    monkeypatch.setattr(psycopg.AsyncConnection, "cancel_safe", broken)
    async with pg_store(postgres_url, pg_schema, lock_timeout=60.0, write_seconds=1.0) as store:
        (job,) = await running_jobs(store, 1)
        with (
            row_locks(postgres_url, pg_schema, [job.id]),
            anyio.fail_after(30),
            pytest.raises(PersistenceError) as raised,
        ):
            await store.apply(finish(job))
        assert raised.value.message.startswith(
            f"the postgresql store at {store.target} did not apply_transition within 1 s (the server did "
            "not answer its cancellation either: it may still have been written; error id "
        ), raised.value.message
        said = "the cancellation of a statement past its deadline failed"
        failures = [r for r in caplog.records if said in r.getMessage()]
        assert len(failures) == 1
        assert failures[0].exc_info is not None
        assert str(failures[0].exc_info[1]) == "the cancel request broke"
        # Abandoned, not cancelled: once the lock is gone it may land, as the error said.
        # The job ends once either way.
        with anyio.fail_after(30):
            try:
                current = await store.apply(finish(job))
            except TransitionConflict:
                current = await store.get(job.id)
        assert current.status is JobStatus.COMPLETED
        assert [e.status_to for e in await store.history(job.id)].count(JobStatus.COMPLETED) == 1


@pytest.mark.postgres
async def test_lease_renewals_skip_a_row_another_session_holds_and_keep_it(postgres_url: str, pg_schema: str) -> None:
    async with pg_store(postgres_url, pg_schema, lock_timeout=60.0) as store:
        locked, free, lost = await running_jobs(store, 3)
        await store.apply(finish(lost))  # ended: no longer this worker's lease
        expires = now_ns() + 10**12
        with row_locks(postgres_url, pg_schema, [locked.id]) as holder:
            with anyio.fail_after(10):  # not the 60 s lock timeout
                owned = await store.renew_leases([locked.id, free.id, lost.id], worker_id="w-1", expires_ns=expires)
                # Once its stored lease has expired (a reaper may be taking it), a skipped
                # row is not this worker's any more.
                later = locked.lease_expires_ns + 1  # type: ignore[operator]
                late = await store.renew_leases([locked.id], worker_id="w-1", expires_ns=later + 10**9, now_ns=later)
            assert late == set()
            assert blocked_by(postgres_url, holder) == 0
        assert owned == {locked.id, free.id}  # the locked one is still this worker's, not lost
        assert (await store.get(free.id)).lease_expires_ns == expires
        assert (await store.get(locked.id)).lease_expires_ns != expires  # skipped, renewed next time


# -- housekeeping past a row lock held for good (PostgreSQL) ---------------------------------


async def finished_jobs(store: JobStore, count: int) -> list[Job]:
    """``count`` jobs ended Completed, one after the other (their finish times in order)."""
    ended = []
    for job in await running_jobs(store, count):
        ended.append(await store.apply(finish(job)))
    return ended


@pytest.mark.postgres
async def test_prune_deletes_past_a_finished_job_whose_row_another_session_holds(
    postgres_url: str, pg_schema: str
) -> None:
    from orchestrator.usecases.prune import PruneUseCase

    # A lock timeout far above the test's bound: waiting on the row would fail the test.
    async with pg_store(postgres_url, pg_schema, lock_timeout=60.0) as store:
        oldest, second, third = await finished_jobs(store, 3)
        cutoff = third.finished_ns + 1  # type: ignore[operator]
        with row_locks(postgres_url, pg_schema, [oldest.id]) as holder:
            with anyio.fail_after(10):
                # The oldest is held: the round takes the next ones, up to its limit.
                assert await store.prune(before_ns=cutoff, limit=1) == [second.id]
                report = await PruneUseCase(store).execute(before_ns=cutoff)
            assert (report.jobs, report.held) == (1, 1)
            assert blocked_by(postgres_url, holder) == 0
            assert (await store.get(oldest.id)).status is JobStatus.COMPLETED
            assert await store.history(oldest.id) != []  # nothing of it deleted
            for gone in (second, third):
                with pytest.raises(JobNotFound):
                    await store.get(gone.id)
        # Once the lock is gone, the next prune takes it.
        report = await PruneUseCase(store).execute(before_ns=cutoff)
        assert (report.jobs, report.held) == (1, 0)
        assert await store.history(oldest.id) == []


@pytest.mark.postgres
async def test_trace_claims_skip_a_job_whose_row_another_session_holds(postgres_url: str, pg_schema: str) -> None:
    async with pg_store(postgres_url, pg_schema, lock_timeout=60.0) as store:
        jobs = await finished_jobs(store, 3)
        ids = [job.id for job in jobs]
        # Their root spans were lost: the reconciler is to rebuild them.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            lost = sql.SQL("UPDATE {}.jobs SET trace_lost_ns = finished_ns WHERE id = ANY(%s)")
            assert conn.execute(lost.format(sql.Identifier(pg_schema)), (ids,)).rowcount == 3
        after = max(job.finished_ns for job in jobs if job.finished_ns is not None) + 1
        claim = {"now_ns": after, "before_ns": after, "expires_ns": after + 10**12}
        with row_locks(postgres_url, pg_schema, [ids[0]]) as holder:
            with anyio.fail_after(10):
                first = await store.trace_claim(owner="r-1", limit=1, **claim)
                rest = await store.trace_claim(owner="r-1", limit=10, **claim)
            assert blocked_by(postgres_url, holder) == 0
        assert [job.id for job, _ in first] == [ids[1]]  # the next one, not nothing
        assert [job.id for job, _ in rest] == [ids[2]]
        later = await store.trace_claim(owner="r-2", limit=10, **claim)
        assert [job.id for job, _ in later] == [ids[0]]


@pytest.mark.postgres
async def test_the_prune_command_says_which_jobs_it_left_behind_a_held_row(postgres_url: str, tmp_path: Path) -> None:
    from cli_helpers import Env
    from pg_helpers import fresh_database

    with fresh_database(postgres_url) as url:
        async with pg_store(url, None, lock_timeout=60.0) as store:
            held, deleted = await finished_jobs(store, 2)
        # A lock timeout the test would not outlive: waiting on the held row fails it.
        env = Env(cwd=tmp_path, data_dir=tmp_path / "data")
        settings = {"ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_PG_LOCK_TIMEOUT_SECONDS": "600"}
        with row_locks(url, "public", [held.id]):
            run = await anyio.to_thread.run_sync(
                lambda: env.run("prune", "--older-than", "0", timeout=60, env=settings)
            )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("deleted 1 finished jobs older than 0 "), run.stdout
        assert run.stderr.splitlines() == [
            "orchestrator: warning: left 1 finished jobs in place: another database session held their rows "
            "(a transaction left open?) or they finished during the prune; run prune again later"
        ]
        async with pg_store(url, None, lock_timeout=60.0) as store:
            assert (await store.get(held.id)).status is JobStatus.COMPLETED
            with pytest.raises(JobNotFound):
                await store.get(deleted.id)


async def test_trace_claims_take_the_oldest_due_jobs_first(store: JobStore) -> None:
    # Many more than a claim's candidates, finished in the reverse of their id order (ids
    # are time-ordered: an order by id would pass for the oldest otherwise).
    jobs = [await store.apply(finish(job)) for job in reversed(await running_jobs(store, 60))]
    # Flagged lost newest first, so neither insertion nor flag order gives the answer.
    await store.trace_confirm(emitter="e-1", confirmed_seq=None, lost=[j.id for j in reversed(jobs)], now_ns=now_ns())
    after = max(job.finished_ns for job in jobs if job.finished_ns is not None) + 1
    claim = {"now_ns": after, "before_ns": after, "expires_ns": after + 10**12}
    claimed = [job.id for job, _ in await store.trace_claim(owner="r-1", limit=1, **claim)]
    claimed += [job.id for job, _ in await store.trace_claim(owner="r-1", limit=2, **claim)]
    by_finish = sorted(jobs, key=lambda j: (j.finished_ns, j.id))
    assert claimed == [j.id for j in by_finish[:3]]
