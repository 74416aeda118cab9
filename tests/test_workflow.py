"""``JobWorkflow`` on real SQLite files: compare-and-set races between store instances,
attempt fencing, cancellation in every status and lease recovery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from orchestrator.domain import (
    ErrorCategory,
    IllegalTransition,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    Phase,
    TraceContext,
    TransitionConflict,
)
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow

pytestmark = pytest.mark.anyio


@dataclass
class Side:
    """One process's view: its own store connection and workflow on the shared file."""

    store: SQLiteJobStore
    workflow: JobWorkflow


@pytest.fixture
async def sides(tmp_path: Path) -> AsyncIterator[tuple[Side, Side]]:
    """Two independent SQLiteJobStore instances on the same database file."""
    path = tmp_path / "jobs.db"
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(2):
            store = SQLiteJobStore(path)
            await store.open()
            stack.push_async_callback(store.close)
            opened.append(Side(store, JobWorkflow(store, JobTelemetry())))
        yield opened[0], opened[1]


@pytest.fixture
async def side(sides: tuple[Side, Side]) -> Side:
    return sides[0]


def new_job(project_id: str = "proj-wf") -> Job:
    return Job.new(
        project_id=project_id,
        source="/srv/projects/demo",
        modules=("a",),
        options=JobOptions(),
        trace=TraceContext.new(sampled=False),
    )


async def pending_job(side: Side) -> Job:
    return await side.workflow.create(new_job())


async def queued_job(side: Side) -> Job:
    return await side.workflow.transition(await pending_job(side), JobStatus.QUEUED, reason="enqueued")


async def running_job(side: Side, *, worker_id: str = "w1", lease_seconds: float = 30.0) -> Job:
    job = await queued_job(side)
    return await side.workflow.start(job, worker_id=worker_id, lease_seconds=lease_seconds)


async def finished_job(side: Side, status: JobStatus) -> Job:
    job = await running_job(side)
    return await side.workflow.transition(job, status, reason=f"finished {status}")


# --- compare-and-set ---------------------------------------------------------------------------


async def race(side: Side, job: Job, target: JobStatus, outcomes: dict[JobStatus, Job | TransitionConflict]) -> None:
    lease = 30.0 if target is JobStatus.RUNNING else None
    try:
        outcomes[target] = await side.workflow.transition(
            job, target, reason=f"race to {target}", worker_id="w", lease_seconds=lease
        )
    except TransitionConflict as conflict:
        outcomes[target] = conflict


async def test_concurrent_transitions_from_two_store_instances_have_exactly_one_winner(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    contenders = [(a, JobStatus.RUNNING), (b, JobStatus.CANCELLED)]
    for round_ in range(10):  # alternate who starts first: the winner varies, the invariant must not
        job = await queued_job(a)
        outcomes: dict[JobStatus, Job | TransitionConflict] = {}
        async with anyio.create_task_group() as tg:
            for side, target in contenders if round_ % 2 else contenders[::-1]:
                tg.start_soon(race, side, job, target, outcomes)

        winners = {t: o for t, o in outcomes.items() if isinstance(o, Job)}
        losers = {t: o for t, o in outcomes.items() if isinstance(o, TransitionConflict)}
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        (won_target, won), (lost_target, conflict) = next(iter(winners.items())), next(iter(losers.items()))
        assert won.status is won_target
        assert conflict.expected is JobStatus.QUEUED
        assert conflict.current is won_target
        assert conflict.target is lost_target
        assert job.id in str(conflict)

        stored = await b.store.get(job.id)
        assert stored.status is won_target
        history = await a.store.history(job.id)
        assert [(e.status_from, e.status_to) for e in history] == [
            (None, JobStatus.PENDING),
            (JobStatus.PENDING, JobStatus.QUEUED),
            (JobStatus.QUEUED, won_target),
        ]


async def claim(side: Side, worker_id: str, claimed: dict[str, Job | None]) -> None:
    claimed[worker_id] = await side.workflow.claim(worker_id, lease_seconds=30)


async def test_concurrent_claims_from_two_store_instances_hand_a_job_to_one_worker(sides: tuple[Side, Side]) -> None:
    a, b = sides
    for _ in range(10):
        job = await queued_job(a)
        claimed: dict[str, Job | None] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, a, "wa", claimed)
            tg.start_soon(claim, b, "wb", claimed)

        got = {w: j for w, j in claimed.items() if j is not None}
        assert len(got) == 1, claimed
        (worker_id, running), = got.items()
        assert running.id == job.id
        assert (running.status, running.lease_owner) == (JobStatus.RUNNING, worker_id)
        history = await a.store.history(job.id)
        assert [(e.status_from, e.status_to, e.worker_id) for e in history][-1] == (
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            worker_id,
        )
        assert sum(1 for e in history if e.status_to is JobStatus.RUNNING) == 1
        assert await a.store.queue_depth() == 0


async def test_a_stale_attempt_is_fenced_off_after_the_job_was_requeued(sides: tuple[Side, Side]) -> None:
    a, b = sides
    stale = await running_job(a, worker_id="w-old")
    requeued = await b.workflow.recover(stale, max_attempts=3, worker_id="reaper")
    assert (requeued.status, requeued.attempt) == (JobStatus.QUEUED, 2)
    current = await b.workflow.claim("w-new", lease_seconds=30)
    assert current is not None
    assert (current.id, current.attempt, current.lease_owner) == (stale.id, 2, "w-new")
    history_before = await a.store.history(stale.id)

    # The old worker, unaware, tries to finish its attempt: same status, older attempt.
    with pytest.raises(TransitionConflict):
        await a.workflow.transition(stale, JobStatus.COMPLETED, reason="old worker finished", worker_id="w-old")

    assert await a.store.history(stale.id) == history_before
    after = await a.store.get(stale.id)
    assert (after.status, after.attempt, after.lease_owner) == (JobStatus.RUNNING, 2, "w-new")
    # The current attempt still can.
    done = await b.workflow.transition(current, JobStatus.COMPLETED, reason="done", worker_id="w-new")
    assert (done.status, done.attempt) == (JobStatus.COMPLETED, 2)


async def test_a_stale_status_is_refused_as_a_conflict(side: Side) -> None:
    job = await queued_job(side)
    await side.workflow.start(job, worker_id="w1", lease_seconds=30)
    with pytest.raises(TransitionConflict) as raised:
        await side.workflow.transition(job, JobStatus.CANCELLED, reason="late cancel")
    assert (raised.value.expected, raised.value.current) == (JobStatus.QUEUED, JobStatus.RUNNING)
    assert (await side.store.get(job.id)).status is JobStatus.RUNNING


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "status", "phase"),
    [(pending_job, JobStatus.PENDING, Phase.CREATE), (queued_job, JobStatus.QUEUED, Phase.QUEUED)],
    ids=["pending", "queued"],
)
async def test_cancel_of_a_job_not_yet_running_cancels_it_at_once(
    side: Side, make: Callable[[Side], Awaitable[Job]], status: JobStatus, phase: Phase
) -> None:
    job = await make(side)
    assert job.status is status

    cancelled = await side.workflow.cancel(job.id, reason="not needed")

    assert cancelled.status is JobStatus.CANCELLED
    assert (cancelled.reason, cancelled.error_category, cancelled.error_phase) == (
        "not needed",
        ErrorCategory.CANCELLED,
        phase,
    )
    assert cancelled.finished_ns is not None
    last = (await side.store.history(job.id))[-1]
    assert (last.status_from, last.status_to, last.reason) == (status, JobStatus.CANCELLED, "not needed")
    assert await side.store.queue_depth() == 0


async def test_cancel_of_a_running_job_flags_it_and_leaves_it_running(sides: tuple[Side, Side]) -> None:
    a, b = sides
    job = await running_job(a)
    history_before = await a.store.history(job.id)

    flagged = await b.workflow.cancel(job.id, reason="stop it", requested_by="cli:bob@host")

    assert flagged.status is JobStatus.RUNNING
    assert (flagged.cancel_requested, flagged.cancel_requested_by) == ("stop it", "cli:bob@host")
    stored = await a.store.get(job.id)
    assert (stored.status, stored.cancel_requested, stored.attempt) == (JobStatus.RUNNING, "stop it", 1)
    assert await a.store.cancel_requests([job.id]) == {job.id: "stop it"}
    # The request is in the history (who, why, when), as a row that changes no status.
    history = await a.store.history(job.id)
    assert history[:-1] == history_before
    assert (history[-1].event, history[-1].status_from, history[-1].status_to) == (
        "job.lifecycle.cancel_requested",
        JobStatus.RUNNING,
        JobStatus.RUNNING,
    )
    assert (history[-1].reason, history[-1].worker_id) == ("stop it", "cli:bob@host")


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_cancel_of_a_finished_job_is_an_illegal_transition(side: Side, status: JobStatus) -> None:
    job = await finished_job(side, status)
    history_before = await side.store.history(job.id)

    with pytest.raises(IllegalTransition) as raised:
        await side.workflow.cancel(job.id)

    assert not isinstance(raised.value, TransitionConflict)
    assert (raised.value.current, raised.value.target) == (status, JobStatus.CANCELLED)
    assert job.id in str(raised.value)
    assert await side.store.history(job.id) == history_before
    assert (await side.store.get(job.id)).status is status


async def test_unknown_job_ids_raise_job_not_found(side: Side) -> None:
    missing = new_job()  # never inserted
    with pytest.raises(JobNotFound, match=missing.id):
        await side.workflow.cancel(missing.id)
    with pytest.raises(JobNotFound):
        await side.store.get(missing.id)
    with pytest.raises(JobNotFound):
        await side.workflow.transition(missing, JobStatus.QUEUED, reason="enqueued")
    with pytest.raises(JobNotFound):
        await side.store.request_cancel(missing.id, "x", requested_by="test", at_ns=1)
    assert await side.store.history(missing.id) == []


# --- recover -----------------------------------------------------------------------------------


async def test_recover_requeues_with_the_next_attempt_and_reason_lease_expired(side: Side) -> None:
    job = await running_job(side, worker_id="w-dead")

    recovered = await side.workflow.recover(job, max_attempts=3, worker_id="reaper")

    assert recovered.status is JobStatus.QUEUED
    assert (recovered.attempt, recovered.reason) == (2, "lease_expired")
    assert (recovered.lease_owner, recovered.lease_expires_ns) == (None, None)
    assert recovered.error_category is None
    last = (await side.store.history(job.id))[-1]
    assert (last.status_from, last.status_to, last.reason, last.attempt, last.worker_id) == (
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        "lease_expired",
        2,
        "reaper",
    )
    assert await side.store.queue_depth() == 1


async def test_recover_fails_the_job_with_worker_lost_after_max_attempts(side: Side) -> None:
    max_attempts = 3
    job = await running_job(side)
    for attempt in range(1, max_attempts):
        assert job.attempt == attempt
        queued = await side.workflow.recover(job, max_attempts=max_attempts)
        assert (queued.status, queued.attempt) == (JobStatus.QUEUED, attempt + 1)
        claimed = await side.workflow.claim(f"w{attempt + 1}", lease_seconds=30)
        assert claimed is not None
        job = claimed
    assert job.attempt == max_attempts

    failed = await side.workflow.recover(job, max_attempts=max_attempts)

    assert failed.status is JobStatus.FAILED
    assert failed.error_category is ErrorCategory.QUEUE
    assert failed.error_phase is Phase.EXECUTE
    assert failed.reason is not None
    assert failed.reason.startswith("worker_lost")
    assert f"attempt {max_attempts} of {max_attempts}" in failed.reason
    history = await side.store.history(job.id)
    assert [e.reason for e in history].count("lease_expired") == max_attempts - 1
    assert (history[-1].status_from, history[-1].status_to) == (JobStatus.RUNNING, JobStatus.FAILED)


async def test_recover_of_a_job_with_a_cancel_request_cancels_it(side: Side) -> None:
    job = await running_job(side)
    await side.workflow.cancel(job.id, reason="user gave up")
    flagged = await side.store.get(job.id)

    recovered = await side.workflow.recover(flagged, max_attempts=3)

    assert recovered.status is JobStatus.CANCELLED
    assert (recovered.reason, recovered.error_category) == ("user gave up", ErrorCategory.CANCELLED)
    assert recovered.cancel_requested is None
