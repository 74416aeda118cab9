"""One round trip where two were: create and enqueue in one write (``JobStore.insert_enqueued``,
used by the create use case) leaves exactly what an insert followed by the Pending -> Queued
transition leaves (job row, history, webhook outbox), and a transition returning the history
(``JobStore.apply_with_history``, for the root span) returns what a separate read would."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.domain import (
    Job,
    JobOptions,
    JobStatus,
    PersistenceError,
    TraceContext,
    Transition,
    TransitionConflict,
    now_ns,
)
from orchestrator.stores.base import JobStore
from orchestrator.webhooks.models import Subscription
from orchestrator.webhooks.store import webhook_store

pytestmark = pytest.mark.anyio


def _job(project_id: str) -> Job:
    return Job.new(project_id=project_id, source="/srv/repo", modules=("a", "b"), options=JobOptions(),
                   trace=TraceContext.new(link="00-" + "1" * 32 + "-" + "2" * 16 + "-01"))


def _enqueue(job: Job) -> Transition:
    at = now_ns()
    return Transition(job.id, JobStatus.PENDING, JobStatus.QUEUED, "enqueued", at, (at - job.created_ns) / 1e6, 1, 1)


async def test_insert_enqueued_matches_insert_then_apply(store: JobStore) -> None:
    hooks = webhook_store(store)
    await hooks.add_subscription(Subscription("sub1", "proj", "https://example.com/h", "s3cret",
                                              ("job.lifecycle.enqueue",), now_ns()))
    two_steps, one_write = _job("proj"), _job("proj")

    await store.insert(two_steps)
    t1 = _enqueue(two_steps)
    applied = await store.apply(t1)
    t2 = _enqueue(one_write)
    created = await store.insert_enqueued(one_write, t2)

    assert created.status is JobStatus.QUEUED
    assert created == await store.get(one_write.id)
    same = {"id", "created_ns", "status_ns", "queued_ns", "trace"}
    assert {k: v for k, v in dataclasses.asdict(created).items() if k not in same} == {
        k: v for k, v in dataclasses.asdict(applied).items() if k not in same
    }
    assert (created.status_ns, created.queued_ns, created.trace) == (t2.at_ns, t2.at_ns, one_write.trace)

    for job, t in ((two_steps, t1), (one_write, t2)):
        history = await store.history(job.id)
        assert [(e.seq, e.status_from, e.status_to, e.reason, e.attempt, e.worker_id) for e in history] == [
            (1, None, JobStatus.PENDING, "created", 1, None),
            (2, JobStatus.PENDING, JobStatus.QUEUED, "enqueued", 1, None),
        ]
        assert (history[0].at_ns, history[0].duration_ms) == (job.created_ns, 0.0)
        assert (history[1].at_ns, history[1].duration_ms) == (t.at_ns, pytest.approx(t.duration_ms))
        deliveries = await hooks.list_deliveries(job_id=job.id)
        assert [(d.subscription_id, d.event) for d in deliveries] == [("sub1", "job.lifecycle.enqueue")]
    strip = {"job_id", "timestamp", "trace_id"}
    first, second = [
        {k: v for k, v in (await hooks.list_deliveries(job_id=j.id))[0].payload.items() if k not in strip}
        for j in (two_steps, one_write)
    ]
    assert first == second


async def test_insert_enqueued_writes_nothing_when_the_insert_fails(store: JobStore) -> None:
    job = _job("proj")
    await store.insert_enqueued(job, _enqueue(job))
    again = dataclasses.replace(job, created_ns=job.created_ns + 1)
    with pytest.raises(PersistenceError):  # the duplicate id
        await store.insert_enqueued(again, _enqueue(again))
    assert [e.seq for e in await store.history(job.id)] == [1, 2]


async def test_insert_enqueued_refuses_anything_but_a_pending_job_and_its_enqueue(store: JobStore) -> None:
    job = _job("proj")
    with pytest.raises(ValueError, match="insert_enqueued"):
        await store.insert_enqueued(job, dataclasses.replace(_enqueue(job), status_to=JobStatus.CANCELLED))
    with pytest.raises(ValueError, match="insert_enqueued"):
        await store.insert_enqueued(job, dataclasses.replace(_enqueue(job), job_id="other"))


async def test_apply_with_history_returns_what_apply_then_history_would(store: JobStore) -> None:
    job = _job("proj")
    queued = await store.insert_enqueued(job, _enqueue(job))
    running = await store.claim(worker_id="w1", lease_ns=30 * 10**9, now_ns=now_ns())
    assert running is not None
    assert running.id == queued.id
    at = now_ns()
    done, history = await store.apply_with_history(
        Transition(job.id, JobStatus.RUNNING, JobStatus.COMPLETED, "all done", at, 1.5, 1, 1, worker_id="w1")
    )
    assert done == await store.get(job.id)
    assert done.status is JobStatus.COMPLETED
    assert history == await store.history(job.id)
    assert [(e.status_from, e.status_to) for e in history] == [
        (None, JobStatus.PENDING),
        (JobStatus.PENDING, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
    ]
    assert (history[-1].at_ns, history[-1].duration_ms, history[-1].worker_id) == (at, 1.5, "w1")


async def test_apply_with_history_refuses_a_stale_transition_like_apply(store: JobStore) -> None:
    job = _job("proj")
    await store.insert_enqueued(job, _enqueue(job))
    stale = Transition(job.id, JobStatus.RUNNING, JobStatus.COMPLETED, "stale", now_ns(), 1.0, 1, 1)
    with pytest.raises(TransitionConflict):
        await store.apply_with_history(stale)
    assert len(await store.history(job.id)) == 2
