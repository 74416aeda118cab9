"""The job status machine, enforced by ``JobWorkflow`` on a real SQLite store.

Every (status, target) pair is tried against the transition table, and random
transition sequences are checked to leave a persisted history that is a legal path.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import (
    TRANSITIONS,
    IllegalTransition,
    Job,
    JobOptions,
    JobStatus,
    LifecycleEntry,
    TraceContext,
    TransitionConflict,
    is_legal,
)
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow

START_NS = 1_700_000_000_000_000_000
STEP_NS = 1_000_000  # the test clock advances exactly 1 ms per reading

#: A legal route from Pending to each status (the status itself is the last step).
ROUTE: dict[JobStatus, tuple[JobStatus, ...]] = {
    JobStatus.PENDING: (),
    JobStatus.QUEUED: (JobStatus.QUEUED,),
    JobStatus.RUNNING: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.COMPLETED: (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED),
    JobStatus.FAILED: (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED),
    JobStatus.CANCELLED: (JobStatus.QUEUED, JobStatus.CANCELLED),
}

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


def stepping_clock(start: int = START_NS, step: int = STEP_NS) -> Callable[[], int]:
    counter = itertools.count(1)
    return lambda: start + next(counter) * step


def new_job() -> Job:
    return Job.new(
        project_id="proj-sm",
        source="/srv/projects/demo",
        modules=("a",),
        options=JobOptions(),
        trace=TraceContext.new(sampled=False),
        created_ns=START_NS,
    )


@asynccontextmanager
async def open_workflow(path: Path) -> AsyncIterator[tuple[SQLiteJobStore, JobWorkflow]]:
    store = SQLiteJobStore(path)
    await store.open()
    try:
        yield store, JobWorkflow(store, JobTelemetry(), clock=stepping_clock())
    finally:
        await store.close()


async def drive_to(workflow: JobWorkflow, status: JobStatus) -> Job:
    """Create a job and move it to ``status`` through legal transitions only."""
    assert all(is_legal(a, b) for a, b in itertools.pairwise((JobStatus.PENDING, *ROUTE[status])))
    job = await workflow.create(new_job())
    for step in ROUTE[status]:
        job = await workflow.transition(job, step, reason=f"drive to {step}")
    assert job.status is status
    return job


def test_every_status_has_a_route_and_the_table_covers_every_status() -> None:
    assert set(ROUTE) == set(JobStatus) == set(TRANSITIONS)
    for status in JobStatus:
        assert (not TRANSITIONS[status]) == status.terminal


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
async def test_transition_is_applied_with_one_history_row_iff_the_table_allows_it(
    tmp_path: Path, status: JobStatus, target: JobStatus
) -> None:
    async with open_workflow(tmp_path / "jobs.db") as (store, workflow):
        job = await drive_to(workflow, status)
        before = await store.history(job.id)
        reason = f"test moves {status} to {target}"

        if target in TRANSITIONS[status]:
            updated = await workflow.transition(job, target, reason=reason)

            after = await store.history(job.id)
            assert len(after) == len(before) + 1
            assert after[:-1] == before
            row = after[-1]
            assert (row.status_from, row.status_to, row.reason) == (status, target, reason)
            assert row.seq == before[-1].seq + 1
            # Time spent in `status`: from entering it to this transition, by the test clock.
            assert row.duration_ms == pytest.approx((row.at_ns - job.status_ns) / 1e6)
            assert row.duration_ms == pytest.approx(STEP_NS / 1e6)
            recovering = (status, target) == (JobStatus.RUNNING, JobStatus.QUEUED)
            assert row.attempt == updated.attempt == job.attempt + (1 if recovering else 0)
            stored = await store.get(job.id)
            assert stored == updated
            assert (stored.status, stored.reason, stored.status_ns) == (target, reason, row.at_ns)
        else:
            with pytest.raises(IllegalTransition) as raised:
                await workflow.transition(job, target, reason=reason)

            error = raised.value
            assert type(error) is IllegalTransition  # refused by the table, not a lost race
            assert not isinstance(error, TransitionConflict)
            assert (error.current, error.target, error.job_id) == (status, target, job.id)
            message = str(error)
            assert job.id in message
            assert str(status) in message
            assert str(target) in message
            assert message == f"job {job.id} cannot go from {status} to {target}"
            assert await store.history(job.id) == before
            assert await store.get(job.id) == job


@pytest.mark.anyio
async def test_create_refuses_a_job_that_is_not_pending(tmp_path: Path) -> None:
    async with open_workflow(tmp_path / "jobs.db") as (store, workflow):
        job = new_job()
        queued = replace(job, status=JobStatus.QUEUED)
        with pytest.raises(IllegalTransition, match=job.id):
            await workflow.create(queued)
        assert await store.list_jobs() == []


# --- random sequences --------------------------------------------------------------------------


def check_history_is_a_legal_path(history: list[LifecycleEntry], final: Job) -> None:
    assert history, "a created job has at least its creation row"
    first = history[0]
    assert (first.status_from, first.status_to, first.attempt) == (None, JobStatus.PENDING, 1)
    assert [entry.seq for entry in history] == list(range(1, len(history) + 1))
    for previous, entry in itertools.pairwise(history):
        assert entry.status_from == previous.status_to
        assert entry.status_from is not None
        assert is_legal(entry.status_from, entry.status_to)
        assert entry.at_ns > previous.at_ns
        assert entry.duration_ms == pytest.approx((entry.at_ns - previous.at_ns) / 1e6)
        recovered = (entry.status_from, entry.status_to) == (JobStatus.RUNNING, JobStatus.QUEUED)
        assert entry.attempt == previous.attempt + (1 if recovered else 0)
    assert history[-1].status_to == final.status
    assert history[-1].attempt == final.attempt
    recoveries = sum(1 for e in history if (e.status_from, e.status_to) == (JobStatus.RUNNING, JobStatus.QUEUED))
    assert final.attempt == 1 + recoveries


async def apply_sequence(path: Path, targets: list[JobStatus]) -> None:
    async with open_workflow(path) as (store, workflow):
        job = await workflow.create(new_job())
        applied = 0
        for index, target in enumerate(targets):
            reason = f"step {index}: {job.status} -> {target}"
            if is_legal(job.status, target):
                previous = job
                job = await workflow.transition(job, target, reason=reason)
                applied += 1
                recovered = (previous.status, target) == (JobStatus.RUNNING, JobStatus.QUEUED)
                assert job.attempt == previous.attempt + (1 if recovered else 0)
                assert job.status is target
            else:
                before = await store.history(job.id)
                with pytest.raises(IllegalTransition) as raised:
                    await workflow.transition(job, target, reason=reason)
                assert not isinstance(raised.value, TransitionConflict)
                assert await store.history(job.id) == before
                assert await store.get(job.id) == job
        history = await store.history(job.id)
        assert len(history) == 1 + applied
        final = await store.get(job.id)
        assert final == job
        check_history_is_a_legal_path(history, final)


# Sequences biased towards the non-terminal statuses so running -> queued loops occur often.
targets_strategy = st.lists(
    st.sampled_from(
        [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.RUNNING, *JobStatus]
    ),
    max_size=16,
)


@settings(max_examples=50, deadline=None)
@given(targets=targets_strategy)
def test_random_transition_sequences_leave_a_legal_persisted_history(targets: list[JobStatus]) -> None:
    with tempfile.TemporaryDirectory(prefix="status-machine-") as directory:
        anyio.run(apply_sequence, Path(directory) / "jobs.db", targets, backend="asyncio")
