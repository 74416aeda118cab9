"""Terminal transitions of one process are written in groups (orchestrator/stores/grouping.py
and the store core): a lone one is written at once; those arriving while one is in
flight go together in the next write, each with its own compare-and-set, history row,
outbox rows and outcome; one job's failure fails only that job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import anyio
import pytest

from orchestrator.domain import (
    CancelPending,
    IllegalTransition,
    Job,
    JobOptions,
    JobStatus,
    ModuleOutcome,
    ModuleResult,
    TraceContext,
    Transition,
    TransitionConflict,
    now_ns,
)
from orchestrator.stores.base import JobStore
from orchestrator.stores.core import SQLJobStore
from orchestrator.stores.grouping import GroupedWrites

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


async def test_a_lone_write_is_written_at_once_alone() -> None:
    recorder = Recorder()
    writes = GroupedWrites(recorder.write, key=lambda item: item)
    with anyio.fail_after(1):
        assert await writes.submit("a") == "done a"
    assert recorder.groups == [["a"]]


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
