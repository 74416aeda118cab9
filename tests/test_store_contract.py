"""The ``JobStore`` contract, run against every backend through the ``store`` fixture."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

import anyio
import psycopg
import pytest
from psycopg import sql

from orchestrator.domain import (
    CancelPending,
    ErrorCategory,
    FailurePolicy,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    ModuleOutcome,
    ModuleResult,
    PersistenceError,
    Phase,
    TraceContext,
    Transition,
    TransitionConflict,
    now_ns,
)
from orchestrator.stores.base import JobStore
from orchestrator.stores.postgres import PostgresJobStore
from orchestrator.stores.sql import migrations
from orchestrator.stores.sqlite import SQLiteJobStore

pytestmark = pytest.mark.anyio

SECOND = 1_000_000_000


def new_job(project_id: str = "proj-a", *, options: JobOptions | None = None, trace: TraceContext | None = None) -> Job:
    return Job.new(
        project_id=project_id,
        source="/srv/projects/demo",
        modules=("a", "b"),
        options=options or JobOptions(),
        trace=trace or TraceContext.new(),
    )


def transition(
    job: Job,
    status_to: JobStatus,
    *,
    at_ns: int,
    status_from: JobStatus | None = None,
    attempt: int | None = None,
    new_attempt: int | None = None,
    reason: str | None = None,
    duration_ms: float = 1.5,
    **fields: object,
) -> Transition:
    current = job.attempt if attempt is None else attempt
    return Transition(
        job_id=job.id,
        status_from=status_from or job.status,
        status_to=status_to,
        reason=reason or f"to {status_to}",
        at_ns=at_ns,
        duration_ms=duration_ms,
        attempt=current,
        new_attempt=current if new_attempt is None else new_attempt,
        **fields,  # type: ignore[arg-type]
    )


async def queued_job(store: JobStore, *, at_ns: int, project_id: str = "proj-a") -> Job:
    job = new_job(project_id)
    await store.insert(job)
    return await store.apply(transition(job, JobStatus.QUEUED, at_ns=at_ns, reason="enqueued"))


async def running_job(store: JobStore, *, at_ns: int, worker_id: str = "w1", lease_ns: int = 30 * SECOND) -> Job:
    job = await queued_job(store, at_ns=at_ns)
    claimed = await store.claim(worker_id=worker_id, lease_ns=lease_ns, now_ns=at_ns + 1)
    assert claimed is not None
    assert claimed.id == job.id
    return claimed


@contextlib.asynccontextmanager
async def same_database(store: JobStore, request: pytest.FixtureRequest, count: int) -> AsyncIterator[list[JobStore]]:
    """``count`` more opened stores on the database ``store`` uses (other processes, in effect)."""
    async with contextlib.AsyncExitStack() as stack:
        others: list[JobStore] = []
        for _ in range(count):
            other: JobStore
            if isinstance(store, SQLiteJobStore):
                other = SQLiteJobStore(store.path)
            else:
                assert isinstance(store, PostgresJobStore)
                other = PostgresJobStore(request.getfixturevalue("postgres_url"), schema=store.schema)
            await other.open()
            stack.push_async_callback(other.close)
            others.append(other)
        yield others


# -- insert / get ---------------------------------------------------------------------


async def test_insert_get_round_trip_preserves_every_field(store: JobStore) -> None:
    options = JobOptions(
        failure_policy=FailurePolicy.FAIL_FAST,
        concurrency=3,
        module_options={"a": {"depth": 2, "paths": ["x", "y"], "strict": True}},
    )
    trace = TraceContext.new(sampled=False, link="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    job = new_job("proj-rt", options=options, trace=trace)

    await store.insert(job)

    assert await store.get(job.id) == job
    [created] = await store.history(job.id)
    assert (created.seq, created.status_from, created.status_to) == (1, None, JobStatus.PENDING)
    assert created.reason == "created"
    assert (created.at_ns, created.duration_ms, created.attempt, created.worker_id) == (job.created_ns, 0.0, 1, None)


async def test_get_unknown_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await store.get("no-such-job")


# -- apply ----------------------------------------------------------------------------


async def test_apply_legal_transitions_set_status_timestamps_and_history(store: JobStore) -> None:
    job = new_job()
    await store.insert(job)
    t0 = job.created_ns

    queued = await store.apply(transition(job, JobStatus.QUEUED, at_ns=t0 + 10, duration_ms=0.01, reason="enqueued"))
    assert (queued.status, queued.status_ns, queued.queued_ns, queued.reason) == (
        JobStatus.QUEUED,
        t0 + 10,
        t0 + 10,
        "enqueued",
    )
    assert (queued.started_ns, queued.finished_ns) == (None, None)

    running = await store.apply(
        transition(
            queued,
            JobStatus.RUNNING,
            at_ns=t0 + 20,
            worker_id="w1",
            lease_owner="w1",
            lease_expires_ns=t0 + 20 + SECOND,
        )
    )
    assert (running.status, running.started_ns, running.queued_ns) == (JobStatus.RUNNING, t0 + 20, t0 + 10)
    assert (running.lease_owner, running.lease_expires_ns) == ("w1", t0 + 20 + SECOND)

    done = await store.apply(transition(running, JobStatus.COMPLETED, at_ns=t0 + 30, worker_id="w1"))
    assert (done.status, done.finished_ns, done.started_ns) == (JobStatus.COMPLETED, t0 + 30, t0 + 20)
    assert (done.lease_owner, done.lease_expires_ns) == (None, None)
    assert await store.get(job.id) == done

    history = await store.history(job.id)
    assert [(h.seq, h.status_from, h.status_to) for h in history] == [
        (1, None, JobStatus.PENDING),
        (2, JobStatus.PENDING, JobStatus.QUEUED),
        (3, JobStatus.QUEUED, JobStatus.RUNNING),
        (4, JobStatus.RUNNING, JobStatus.COMPLETED),
    ]
    last = history[-1]
    assert (last.at_ns, last.worker_id, last.reason, last.attempt) == (t0 + 30, "w1", "to completed", 1)
    # Time spent in the status left, derived by the database from the stored timestamps.
    assert [h.duration_ms for h in history] == pytest.approx([0.0, 10 / 1e6, 10 / 1e6, 10 / 1e6])


async def test_apply_with_stale_status_conflicts_and_writes_nothing(store: JobStore) -> None:
    job = await queued_job(store, at_ns=now_ns(), project_id="proj-c")
    before, history_before = await store.get(job.id), await store.history(job.id)

    stale = transition(job, JobStatus.CANCELLED, at_ns=now_ns(), status_from=JobStatus.PENDING)
    with pytest.raises(TransitionConflict) as caught:
        await store.apply(stale)

    conflict = caught.value
    assert (conflict.expected, conflict.current, conflict.target) == (
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
    )
    assert (conflict.job_id, conflict.project_id) == (job.id, "proj-c")
    assert await store.get(job.id) == before
    assert await store.history(job.id) == history_before


async def test_apply_to_unknown_job_raises_job_not_found(store: JobStore) -> None:
    ghost = new_job()
    with pytest.raises(JobNotFound):
        await store.apply(transition(ghost, JobStatus.QUEUED, at_ns=now_ns()))


async def test_apply_with_stale_attempt_is_fenced_off(store: JobStore) -> None:
    t0 = now_ns()
    first = await running_job(store, at_ns=t0, worker_id="old")
    # The lease expired: recovery re-queues the job at attempt 2 and another worker runs it.
    await store.apply(transition(first, JobStatus.QUEUED, at_ns=t0 + 10, new_attempt=2, reason="lease expired"))
    second = await store.claim(worker_id="new", lease_ns=SECOND, now_ns=t0 + 20)
    assert second is not None
    assert (second.attempt, second.lease_owner) == (2, "new")
    history_before = await store.history(first.id)

    with pytest.raises(TransitionConflict) as caught:
        await store.apply(transition(first, JobStatus.COMPLETED, at_ns=t0 + 30, worker_id="old"))

    assert caught.value.current is JobStatus.RUNNING
    assert await store.get(first.id) == second
    assert await store.history(first.id) == history_before


async def test_recovery_running_to_queued_increments_attempt(store: JobStore) -> None:
    t0 = now_ns()
    running = await running_job(store, at_ns=t0)

    recovered = await store.apply(
        transition(running, JobStatus.QUEUED, at_ns=t0 + 50, new_attempt=running.attempt + 1, reason="lease expired")
    )

    assert (recovered.status, recovered.attempt, recovered.queued_ns) == (JobStatus.QUEUED, 2, t0 + 50)
    assert (recovered.lease_owner, recovered.lease_expires_ns) == (None, None)
    last = (await store.history(running.id))[-1]
    assert (last.status_from, last.status_to, last.attempt, last.reason) == (
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        2,
        "lease expired",
    )


# -- claim ----------------------------------------------------------------------------


async def test_claim_returns_oldest_queued_first_with_lease_and_history(store: JobStore) -> None:
    t0 = now_ns()
    # Enqueued out of creation order: the queue order is queued_ns, not the id.
    jobs = [new_job() for _ in range(3)]
    for job in jobs:
        await store.insert(job)
    for offset, job in zip((30, 10, 20), jobs, strict=True):
        await store.apply(transition(job, JobStatus.QUEUED, at_ns=t0 + offset * 1_000_000))
    expected_order = [jobs[1], jobs[2], jobs[0]]

    now = t0 + 100 * 1_000_000
    claimed = [await store.claim(worker_id="w1", lease_ns=5 * SECOND, now_ns=now) for _ in jobs]

    assert [c.id if c else None for c in claimed] == [j.id for j in expected_order]
    first = claimed[0]
    assert first is not None
    assert (first.status, first.lease_owner, first.lease_expires_ns) == (JobStatus.RUNNING, "w1", now + 5 * SECOND)
    assert (first.started_ns, first.status_ns, first.reason, first.attempt) == (now, now, "claimed", 1)
    assert await store.get(first.id) == first
    last = (await store.history(first.id))[-1]
    assert (last.status_from, last.status_to, last.reason, last.worker_id, last.attempt, last.at_ns) == (
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        "claimed",
        "w1",
        1,
        now,
    )
    assert last.duration_ms == pytest.approx(90.0)  # queued at t0+10ms, claimed at t0+100ms


async def test_claim_on_empty_queue_returns_none(store: JobStore) -> None:
    pending = new_job()
    await store.insert(pending)  # pending, not queued
    assert await store.claim(worker_id="w1", lease_ns=SECOND, now_ns=now_ns()) is None


async def test_concurrent_claims_in_one_store_never_share_a_job(store: JobStore) -> None:
    t0 = now_ns()
    await queued_job(store, at_ns=t0)
    await queued_job(store, at_ns=t0 + 1)
    results: list[Job | None] = []

    async def claim(worker: str) -> None:
        results.append(await store.claim(worker_id=worker, lease_ns=SECOND, now_ns=t0 + 10))

    async with anyio.create_task_group() as tg:
        for worker in ("w1", "w2", "w3"):
            tg.start_soon(claim, worker)

    ids = [job.id for job in results if job is not None]
    assert len(ids) == 2
    assert len(set(ids)) == 2
    assert results.count(None) == 1


async def test_concurrent_claims_from_separate_instances_never_share_a_job(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    t0 = now_ns()
    job = await queued_job(store, at_ns=t0)
    results: list[Job | None] = []

    async with same_database(store, request, 2) as (a, b):

        async def claim(instance: JobStore, worker: str) -> None:
            results.append(await instance.claim(worker_id=worker, lease_ns=SECOND, now_ns=t0 + 10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, a, "wa")
            tg.start_soon(claim, b, "wb")

    claimed = [j for j in results if j is not None]
    assert [j.id for j in claimed] == [job.id]
    assert (await store.get(job.id)).lease_owner == claimed[0].lease_owner


async def test_fifty_jobs_claimed_by_four_instances_exactly_once(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    t0 = now_ns()
    expected = {(await queued_job(store, at_ns=t0 + i)).id for i in range(50)}
    claimed: list[tuple[str, str]] = []

    async def drain(instance: JobStore, worker: str) -> None:
        while (job := await instance.claim(worker_id=worker, lease_ns=30 * SECOND, now_ns=now_ns())) is not None:
            assert job.lease_owner == worker
            claimed.append((job.id, worker))

    async with same_database(store, request, 4) as instances, anyio.create_task_group() as tg:
        for n, instance in enumerate(instances):
            for task in range(2):
                tg.start_soon(drain, instance, f"w{n}-{task}")

    ids = [job_id for job_id, _ in claimed]
    assert len(ids) == 50
    assert set(ids) == expected
    assert await store.queue_depth() == 0
    for job_id, worker in claimed[:5]:
        job = await store.get(job_id)
        assert (job.status, job.lease_owner) == (JobStatus.RUNNING, worker)
        assert [h.status_to for h in await store.history(job_id)].count(JobStatus.RUNNING) == 1


# -- leases ---------------------------------------------------------------------------


async def test_renew_leases_returns_only_owned_ids(store: JobStore) -> None:
    t0 = now_ns()
    mine_1 = await running_job(store, at_ns=t0, worker_id="me")
    mine_2 = await running_job(store, at_ns=t0 + 10, worker_id="me")
    theirs = await running_job(store, at_ns=t0 + 20, worker_id="them")
    finished = await running_job(store, at_ns=t0 + 30, worker_id="me")
    await store.apply(transition(finished, JobStatus.COMPLETED, at_ns=t0 + 40, worker_id="me"))

    ids = [mine_1.id, mine_2.id, theirs.id, finished.id, "no-such-job"]
    owned = await store.renew_leases(ids, worker_id="me", expires_ns=t0 + 99 * SECOND)

    assert owned == {mine_1.id, mine_2.id}
    assert (await store.get(mine_1.id)).lease_expires_ns == t0 + 99 * SECOND
    assert (await store.get(theirs.id)).lease_expires_ns == theirs.lease_expires_ns
    assert await store.renew_leases([], worker_id="me", expires_ns=t0) == set()


async def test_expired_finds_running_jobs_whose_lease_passed(store: JobStore) -> None:
    t0 = now_ns()
    short = await running_job(store, at_ns=t0, lease_ns=SECOND)
    long = await running_job(store, at_ns=t0 + 10, lease_ns=60 * SECOND)
    assert short.lease_expires_ns is not None

    assert await store.expired(now_ns=t0) == []
    expired = await store.expired(now_ns=short.lease_expires_ns + 1)
    assert [j.id for j in expired] == [short.id]
    assert {j.id for j in await store.expired(now_ns=t0 + 120 * SECOND)} == {short.id, long.id}
    assert len(await store.expired(now_ns=t0 + 120 * SECOND, limit=1)) == 1


# -- cancellation ---------------------------------------------------------------------


async def test_request_cancel_round_trip_recorded_and_cleared_on_terminal_transition(store: JobStore) -> None:
    t0 = now_ns()
    running = await running_job(store, at_ns=t0)
    other = await running_job(store, at_ns=t0 + 10)

    flagged = await store.request_cancel(running.id, "user asked", requested_by="cli:alice", at_ns=t0 + 15)
    again = await store.request_cancel(running.id, "asked twice", requested_by="api", at_ns=t0 + 16)

    assert (flagged.cancel_requested, flagged.cancel_requested_by, flagged.cancel_requested_ns) == (
        "user asked",
        "cli:alice",
        t0 + 15,
    )
    assert again == flagged  # the first request stands; a second one records nothing
    assert await store.cancel_requests([running.id, other.id, "no-such-job"]) == {running.id: "user asked"}
    assert await store.cancel_requests([]) == {}
    request = (await store.history(running.id))[-1]
    assert (request.event, request.status_from, request.status_to, request.reason, request.worker_id) == (
        "job.lifecycle.cancel_requested",
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        "user asked",
        "cli:alice",
    )
    assert (request.at_ns, request.duration_ms, request.is_transition) == (t0 + 15, 0.0, False)

    cancelled = await store.apply(
        transition(flagged, JobStatus.CANCELLED, at_ns=t0 + 20, error_category=ErrorCategory.CANCELLED)
    )
    assert cancelled.cancel_requested is None
    assert await store.cancel_requests([running.id]) == {}
    # Time in running is counted from the claim, not from the request.
    assert (await store.history(running.id))[-1].duration_ms == pytest.approx((t0 + 20 - running.status_ns) / 1e6)


async def test_apply_with_history_returns_the_history_as_stored(store: JobStore) -> None:
    """The history a terminal transition hands back (one statement) is the one the store
    then reads: same rows, same seq, same durations, a cancel request included."""
    t0 = now_ns()
    plain = await running_job(store, at_ns=t0)
    flagged = await running_job(store, at_ns=t0 + 10)
    await store.request_cancel(flagged.id, "stop", requested_by="api", at_ns=t0 + 15)

    done, done_history = await store.apply_with_history(
        transition(plain, JobStatus.COMPLETED, at_ns=t0 + 30, worker_id="w1", reason="all modules ok")
    )
    cancelled, cancelled_history = await store.apply_with_history(
        transition(flagged, JobStatus.CANCELLED, at_ns=t0 + 40, error_category=ErrorCategory.CANCELLED)
    )

    assert done_history == await store.history(plain.id)
    assert cancelled_history == await store.history(flagged.id)
    assert [e.status_to for e in done_history] == [
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    ]
    assert done_history[-1].duration_ms == pytest.approx((t0 + 30 - plain.status_ns) / 1e6)
    assert [e.event for e in cancelled_history][-2:] == ["job.lifecycle.cancel_requested", "job.lifecycle.cancel"]
    assert cancelled_history[-1].duration_ms == pytest.approx((t0 + 40 - flagged.status_ns) / 1e6)
    assert (done.status, cancelled.status) == (JobStatus.COMPLETED, JobStatus.CANCELLED)


async def test_a_flagged_job_can_only_end_cancelled(store: JobStore) -> None:
    t0 = now_ns()
    running = await running_job(store, at_ns=t0)
    await store.request_cancel(running.id, "stop it", requested_by="api", at_ns=t0 + 5)

    for target in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED):
        with pytest.raises(CancelPending) as refused:
            await store.apply(transition(running, target, at_ns=t0 + 10))
        assert refused.value.reason == "stop it"
    assert (await store.get(running.id)).status is JobStatus.RUNNING
    cancelled = await store.apply(transition(running, JobStatus.CANCELLED, at_ns=t0 + 20))
    assert cancelled.status is JobStatus.CANCELLED


async def test_request_cancel_of_a_job_not_running_changes_nothing(store: JobStore) -> None:
    job = await queued_job(store, at_ns=now_ns())
    assert (await store.request_cancel(job.id, "too late", requested_by="x", at_ns=now_ns())).cancel_requested is None
    assert await store.get(job.id) == job
    with pytest.raises(JobNotFound):
        await store.request_cancel("no-such-job", "why", requested_by="x", at_ns=now_ns())


# -- reads ----------------------------------------------------------------------------


async def test_list_jobs_filters_and_paginates_without_duplicates_or_gaps(store: JobStore) -> None:
    t0 = now_ns()
    jobs: list[Job] = []
    for i in range(7):
        job = new_job("proj-a" if i % 2 == 0 else "proj-b")
        await store.insert(job)
        if i < 3:
            job = await store.apply(transition(job, JobStatus.QUEUED, at_ns=t0 + i))
        jobs.append(job)
    newest_first = sorted(jobs, key=lambda j: j.id, reverse=True)

    assert await store.list_jobs() == newest_first
    assert await store.list_jobs(status=JobStatus.QUEUED) == [j for j in newest_first if j.status is JobStatus.QUEUED]
    assert await store.list_jobs(project_id="proj-b") == [j for j in newest_first if j.project_id == "proj-b"]
    assert await store.list_jobs(status=JobStatus.PENDING, project_id="proj-a") == [
        j for j in newest_first if j.project_id == "proj-a" and j.status is JobStatus.PENDING
    ]
    assert await store.list_jobs(project_id="nobody") == []

    pages: list[list[Job]] = []
    after: str | None = None
    while page := await store.list_jobs(limit=3, after=after):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j for p in pages for j in p] == newest_first

    filtered = await store.list_jobs(project_id="proj-a", limit=2)
    rest = await store.list_jobs(project_id="proj-a", limit=10, after=filtered[-1].id)
    assert filtered + rest == [j for j in newest_first if j.project_id == "proj-a"]
    queued = await store.list_jobs(status=JobStatus.QUEUED, limit=2)
    more = await store.list_jobs(status=JobStatus.QUEUED, limit=10, after=queued[-1].id)
    assert queued + more == [j for j in newest_first if j.status is JobStatus.QUEUED]
    # A bound above every id, and one below them all.
    assert await store.list_jobs(after="~") == newest_first
    assert await store.list_jobs(after="0") == []


async def test_list_jobs_since_a_moment_and_by_error_category(store: JobStore) -> None:
    """--since and --error-category, alone or with other filters: the jobs created at or
    after the moment (to the nanosecond, though an id bound serves it by the millisecond)
    and the jobs of the category, newest first."""
    base = now_ns() - 3600 * SECOND
    since = base + 5 * 1_000_000 + 500  # inside a millisecond: jobs on both sides of it
    offsets = [0, 4_999_999, 5_000_499, 5_000_500, 5_000_501, 5_999_999, 7_000_000, 3600 * SECOND]
    jobs: list[Job] = []
    for i, offset in enumerate(offsets):
        job = Job.new(
            project_id="proj-a" if i % 2 else "proj-b",
            source="/srv/projects/demo",
            modules=("a",),
            options=JobOptions(),
            trace=TraceContext.new(),
            created_ns=base + offset,
        )
        await store.insert(job)
        jobs.append(job)
    t0 = now_ns()
    categories = [ErrorCategory.MODULE, ErrorCategory.PERSISTENCE, ErrorCategory.MODULE, ErrorCategory.CANCELLED]
    for i, category in enumerate(categories):
        status = JobStatus.CANCELLED if category is ErrorCategory.CANCELLED else JobStatus.FAILED
        jobs[2 * i] = await store.apply(transition(jobs[2 * i], status, at_ns=t0 + i, error_category=category))
    newest_first = sorted(jobs, key=lambda j: j.id, reverse=True)

    recent = [j for j in newest_first if j.created_ns >= since]
    assert len(recent) == 5
    assert await store.list_jobs(since_ns=since) == recent
    assert await store.list_jobs(since_ns=since, limit=2) == recent[:2]
    assert await store.list_jobs(since_ns=since, limit=10, after=recent[1].id) == recent[2:]
    assert await store.list_jobs(since_ns=since, project_id="proj-a") == [j for j in recent if j.project_id == "proj-a"]
    assert await store.list_jobs(since_ns=since, status=JobStatus.FAILED) == [
        j for j in recent if j.status is JobStatus.FAILED
    ]
    assert await store.list_jobs(since_ns=base + 7_000_001) == [jobs[-1]]
    assert await store.list_jobs(since_ns=base + 3601 * SECOND) == []
    assert await store.list_jobs(since_ns=0) == await store.list_jobs(since_ns=-(1 << 80)) == newest_first
    assert await store.list_jobs(since_ns=1 << 80) == []  # beyond any stored time (year 2999 is)

    for category in (ErrorCategory.MODULE, ErrorCategory.PERSISTENCE, ErrorCategory.CANCELLED):
        expected = [j for j in newest_first if j.error_category is category]
        assert expected
        assert await store.list_jobs(error_category=category) == expected
    modules = [j for j in newest_first if j.error_category is ErrorCategory.MODULE]
    assert await store.list_jobs(error_category=ErrorCategory.MODULE, limit=1) == modules[:1]
    assert await store.list_jobs(error_category=ErrorCategory.MODULE, after=modules[0].id) == modules[1:]
    assert await store.list_jobs(error_category=ErrorCategory.MODULE, since_ns=since) == [
        j for j in modules if j.created_ns >= since
    ]
    assert await store.list_jobs(error_category=ErrorCategory.MODULE, status=JobStatus.CANCELLED) == []
    assert await store.list_jobs(error_category=ErrorCategory.TRANSITION) == []


async def test_a_number_beyond_64_bits_is_a_typed_error(store: JobStore) -> None:
    """SQLite's driver cannot bind it (an OverflowError, a traceback on the CLI);
    PostgreSQL refuses it (numeric value out of range). Both are a PersistenceError, and
    the store goes on."""
    with pytest.raises(PersistenceError, match="failed to list_jobs"):
        await store.list_jobs(limit=1 << 70)
    job = new_job()
    await store.insert(job)
    assert await store.list_jobs() == [job]


async def test_queue_depth_counts_queued_jobs(store: JobStore) -> None:
    t0 = now_ns()
    assert await store.queue_depth() == 0
    await store.insert(new_job())
    for i in range(3):
        await queued_job(store, at_ns=t0 + i)
    assert await store.queue_depth() == 3
    await store.claim(worker_id="w1", lease_ns=SECOND, now_ns=t0 + 10)
    assert await store.queue_depth() == 2


async def test_history_is_ordered_by_seq(store: JobStore) -> None:
    t0 = now_ns()
    running = await running_job(store, at_ns=t0)
    requeued = await store.apply(transition(running, JobStatus.QUEUED, at_ns=t0 + 10, new_attempt=2))
    again = await store.claim(worker_id="w2", lease_ns=SECOND, now_ns=t0 + 20)
    assert again is not None
    await store.apply(transition(again, JobStatus.FAILED, at_ns=t0 + 30, worker_id="w2"))

    history = await store.history(requeued.id)

    assert [h.seq for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h.status_to for h in history] == [
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.FAILED,
    ]
    assert [h.attempt for h in history] == [1, 1, 1, 2, 2, 2]
    assert [h.at_ns for h in history][1:] == sorted(h.at_ns for h in history[1:])
    assert await store.history("no-such-job") == []


async def test_results_round_trip_through_a_terminal_transition(store: JobStore) -> None:
    t0 = now_ns()
    running = await running_job(store, at_ns=t0)
    results = (
        ModuleResult(
            module="a",
            version="1.2.0",
            outcome=ModuleOutcome.OK,
            started_ns=t0 + 5,
            duration_ms=12.5,
            expected_ms=100.0,
            timeout_ms=1000.0,
            attempt=1,
            summary={"files": 3, "nested": {"k": [1, 2]}},
        ),
        ModuleResult(
            module="b",
            version="0.1.0",
            outcome=ModuleOutcome.ERROR,
            started_ns=t0 + 6,
            duration_ms=250.0,
            expected_ms=100.0,
            timeout_ms=1000.0,
            attempt=1,
            error="bad input",
            error_type="ValueError",
        ),
    )

    failed = await store.apply(
        transition(
            running,
            JobStatus.FAILED,
            at_ns=t0 + 50,
            worker_id="w1",
            results=results,
            error_category=ErrorCategory.MODULE,
            error_phase=Phase.EXECUTE,
        )
    )

    assert failed.results == results
    stored = await store.get(running.id)
    assert stored.results == results
    assert (stored.error_category, stored.error_phase) == (ErrorCategory.MODULE, Phase.EXECUTE)
    assert stored == failed


# -- PostgreSQL only ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_stores(url: str, schema: str, count: int) -> AsyncIterator[list[PostgresJobStore]]:
    async with contextlib.AsyncExitStack() as stack:
        stores = []
        for _ in range(count):
            opened = PostgresJobStore(url, schema=schema)
            await opened.open()
            stack.push_async_callback(opened.close)
            stores.append(opened)
        yield stores


def record_wakes(store: PostgresJobStore, monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """How each wait of ``store`` on its listening connection ended: True woken by a
    notification, False timed out (None: listening failed). A spy on the real connector."""
    outcomes: list[bool | None] = []
    listen = store.pg._listen

    async def recording(max_wait: float) -> bool | None:
        outcome = await listen(max_wait)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(store.pg, "_listen", recording)
    return outcomes


async def delivered(store: PostgresJobStore) -> None:
    """Make ``store``'s listening connection receive every notification already sent to
    it: the server sends a listener its pending notifications before it answers a query,
    and psycopg keeps them for the next wait. (Instead of sleeping until they arrive.)"""
    listener = store.pg._listener
    assert listener is not None, "the store is not listening yet"
    await listener.execute("SELECT 1")


@pytest.mark.postgres
async def test_wait_for_work_wakes_when_another_instance_enqueues(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with postgres_stores(postgres_url, pg_schema, 2) as (worker, producer):
        wakes = record_wakes(worker, monkeypatch)
        await worker.wait_for_work(max_wait=0.01)  # the first call starts listening
        job = new_job()
        await producer.insert(job)  # Pending: nothing to claim, no notification
        with anyio.fail_after(10):  # far less than max_wait: only a notification ends it
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(worker.wait_for_work, max_wait=60))
                await producer.apply(transition(job, JobStatus.QUEUED, at_ns=now_ns()))
        assert wakes == [False, True]


@pytest.mark.postgres
async def test_wait_for_work_times_out_and_a_burst_wakes_once(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with postgres_stores(postgres_url, pg_schema, 2) as (worker, producer):
        wakes = record_wakes(worker, monkeypatch)
        with anyio.fail_after(10):
            await worker.wait_for_work(max_wait=0.2)
        assert wakes == [False]  # nothing was enqueued: it timed out

        for i in range(5):  # five transactions: five notifications
            await queued_job(producer, at_ns=now_ns() + i)
        await delivered(worker)

        with anyio.fail_after(10):
            await worker.wait_for_work(max_wait=60)  # the burst wakes it ...
            await worker.wait_for_work(max_wait=0.2)  # ... once: the backlog was drained
        assert wakes == [False, True, False]


@pytest.mark.postgres
async def test_a_notification_in_another_schema_does_not_wake_a_worker(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel is named after the schema: two deployments in one database stay apart."""
    other_schema = f"{pg_schema}_other"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other_schema)))
    try:
        async with (
            postgres_stores(postgres_url, pg_schema, 1) as (worker,),
            postgres_stores(postgres_url, other_schema, 1) as (elsewhere,),
        ):
            wakes = record_wakes(worker, monkeypatch)
            await worker.wait_for_work(max_wait=0.01)  # listening
            await queued_job(elsewhere, at_ns=now_ns())
            await delivered(worker)
            with anyio.fail_after(10):
                await worker.wait_for_work(max_wait=0.2)
            assert wakes == [False, False]
            assert await worker.queue_depth() == 0
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other_schema)))


@pytest.mark.postgres
async def test_workers_starting_at_once_apply_migrations_once(postgres_url: str, pg_schema: str) -> None:
    stores = [PostgresJobStore(postgres_url, schema=pg_schema) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for instance in stores:
                tg.start_soon(instance.open)
        await stores[0].ping()
    finally:
        for instance in stores:
            await instance.close()
    with psycopg.connect(postgres_url) as conn:
        query = sql.SQL("SELECT version, name FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(pg_schema)
        )
        expected = [(m.version, m.name) for m in migrations("postgres")]
        assert conn.execute(query).fetchall() == expected


@pytest.mark.postgres
async def test_unreachable_server_raises_persistence_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = PostgresJobStore("postgresql://orchestrator:s3cr3t-pw@127.0.0.1:1/jobs")
    with pytest.raises(PersistenceError) as caught:
        await unreachable.open()
    await unreachable.close()

    assert "127.0.0.1:1/jobs" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert caplog.records
    assert all("s3cr3t-pw" not in r.getMessage() for r in caplog.records)
    assert "s3cr3t-pw" not in repr(unreachable)


@pytest.mark.postgres
async def test_close_stops_a_pending_wait_for_work(postgres_url: str, pg_schema: str) -> None:
    worker = PostgresJobStore(postgres_url, schema=pg_schema)
    await worker.open()
    waited: list[float] = []

    async def wait() -> None:
        start = time.monotonic()
        await worker.wait_for_work(max_wait=5)
        waited.append(time.monotonic() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(wait)  # a second waiter of the same store piggybacks on the listener
        await anyio.wait_all_tasks_blocked()  # both are waiting
        await worker.close()

    assert len(waited) == 2
    assert max(waited) < 2.0
    with pytest.raises(PersistenceError):
        await worker.get("any")


async def test_a_transition_writes_outbox_rows_only_for_the_subscriptions_that_want_it(store: JobStore) -> None:
    """The outbox trigger skips its join while no subscription exists at all (migration
    0006): no rows then, and once one exists every transition of a subscribed project
    gets exactly one row per subscription wanting its event, as before."""
    from orchestrator.webhooks.models import Subscription
    from orchestrator.webhooks.store import webhook_store

    hooks = webhook_store(store)
    t0 = now_ns()
    before = await running_job(store, at_ns=t0)  # created, queued and claimed with no subscription
    assert await hooks.list_deliveries(job_id=before.id) == []

    def subscription(sid: str, project_id: str, *events: str) -> Subscription:
        return Subscription(
            id=sid, project_id=project_id, url="https://hooks.example.com/x", secret="s", events=events, created_ns=t0
        )

    await hooks.add_subscription(subscription("sub-all", "proj-a", "job.lifecycle.complete", "job.lifecycle.start"))
    await hooks.add_subscription(subscription("sub-fail", "proj-a", "job.lifecycle.fail"))
    await hooks.add_subscription(subscription("sub-other", "proj-b", "job.lifecycle.complete"))
    await store.apply(transition(before, JobStatus.COMPLETED, at_ns=t0 + 10, reason="done"))
    after = await running_job(store, at_ns=t0 + 20)

    found = {(d.job_id, d.subscription_id, d.event) for d in await hooks.list_deliveries(limit=100)}
    assert found == {
        (before.id, "sub-all", "job.lifecycle.complete"),
        (after.id, "sub-all", "job.lifecycle.start"),
    }

    for sid in ("sub-all", "sub-fail", "sub-other"):
        await hooks.delete_subscription(sid)
    await store.apply(transition(after, JobStatus.COMPLETED, at_ns=t0 + 30, reason="done"))
    assert await hooks.list_deliveries(limit=100) == []  # the deliveries went with their subscriptions
