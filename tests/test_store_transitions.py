"""The store's transition code, on both databases, where the mutation run found gaps: a
group of terminal transitions is written by one batch that succeeds (not by the
one-by-one fallback, which would hide a broken batch), a lost compare-and-set names its
job, a claimed batch comes back in queue order, and an unknown job is named."""

from __future__ import annotations

from typing import Any

import pytest
from test_store_grouping import apply_together, finish, running_jobs

from orchestrator.domain import (
    CancelPending,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    TraceContext,
    Transition,
    TransitionConflict,
)
from orchestrator.stores.base import JobStore
from orchestrator.stores.core import SQLJobStore

pytestmark = pytest.mark.anyio

NS = 1_700_000_000_000_000_000


def new_job() -> Job:
    return Job.new(
        project_id="proj-st",
        source="/srv/projects/demo",
        modules=("a",),
        options=JobOptions(),
        trace=TraceContext.new(sampled=False),
        created_ns=NS,
    )


def move(job: Job, target: JobStatus, at_ns: int) -> Transition:
    return Transition(
        job_id=job.id,
        status_from=job.status,
        status_to=target,
        reason=f"to {target}",
        at_ns=at_ns,
        duration_ms=1.0,
        attempt=job.attempt,
        new_attempt=job.attempt,
    )


async def test_a_group_of_terminal_transitions_is_written_by_one_successful_batch(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(store, SQLJobStore)
    jobs = await running_jobs(store, 12)
    batches: list[tuple[list[str], bool]] = []
    batch = store.connector.batch

    async def recording(calls: Any) -> Any:
        names = [name for name, _ in calls]
        try:
            found = await batch(calls)
        except BaseException:
            batches.append((names, False))
            raise
        batches.append((names, True))
        return found

    monkeypatch.setattr(store.connector, "batch", recording)
    outcomes = await apply_together(store, [finish(job) for job in jobs])

    assert all(isinstance(outcomes[job.id], tuple) for job in jobs), outcomes
    grouped = [(names, ok) for names, ok in batches if names.count("apply_transition") > 1]
    assert grouped, "no group was written together"
    for names, ok in grouped:
        assert ok, f"a group's batch failed and was applied one by one: {names}"
        # each transition returns its own history: one statement per job, nothing else
        assert names == ["apply_transition"] * len(names)


async def test_a_lost_compare_and_set_names_the_job_and_what_it_found(store: JobStore) -> None:
    job = await store.insert(new_job())
    queued = await store.apply(move(job, JobStatus.QUEUED, NS + 1))
    with pytest.raises(TransitionConflict) as lost:
        await store.apply(move(job, JobStatus.QUEUED, NS + 2))  # still says Pending
    assert (lost.value.job_id, lost.value.project_id) == (job.id, "proj-st")
    assert (lost.value.expected, lost.value.current, lost.value.target) == (
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.QUEUED,
    )
    claimed = await store.claim(worker_id="w", lease_ns=10**10, now_ns=NS + 3)
    assert claimed is not None
    assert claimed.id == queued.id
    await store.request_cancel(job.id, "stop", requested_by="me", at_ns=NS + 4)
    with pytest.raises(CancelPending) as pending:
        await store.apply(move(claimed, JobStatus.COMPLETED, NS + 5))
    assert (pending.value.job_id, pending.value.project_id, pending.value.reason) == (job.id, "proj-st", "stop")
    assert (pending.value.target, pending.value.current) == (JobStatus.COMPLETED, JobStatus.RUNNING)


async def test_an_unknown_job_is_named(store: JobStore) -> None:
    ghost = new_job()
    with pytest.raises(JobNotFound) as applied:
        await store.apply(move(ghost, JobStatus.QUEUED, NS + 1))
    with pytest.raises(JobNotFound) as cancelled:
        await store.request_cancel(ghost.id, "stop", requested_by="me", at_ns=NS + 2)
    assert applied.value.job_id == cancelled.value.job_id == ghost.id


async def test_a_claimed_batch_comes_back_in_queue_order_not_id_order(store: JobStore) -> None:
    low, high = sorted([await store.insert(new_job()), await store.insert(new_job())], key=lambda j: j.id)
    # The job with the higher id enters the queue first.
    await store.apply(move(high, JobStatus.QUEUED, NS + 1))
    await store.apply(move(low, JobStatus.QUEUED, NS + 2))
    claimed = await store.claim_batch(worker_id="w", lease_ns=10**10, now_ns=NS + 3, limit=2)
    assert [j.id for j in claimed] == [high.id, low.id]


def test_a_store_says_where_it_is(tmp_path: Any) -> None:
    from orchestrator.stores.sqlite import SQLiteJobStore

    assert repr(SQLiteJobStore(tmp_path / "jobs.db")) == f"SQLiteJobStore({str(tmp_path / 'jobs.db')!r})"
