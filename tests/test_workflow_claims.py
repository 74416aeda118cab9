"""Claiming and starting through the workflow, on both stores: ``claim`` takes exactly
one job (the oldest), and a started job is leased to its worker, who is named in its
history."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext
from orchestrator.stores.base import JobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow

pytestmark = pytest.mark.anyio

START_NS = 1_700_000_000_000_000_000


def clock() -> Callable[[], int]:
    counter = itertools.count(1)
    return lambda: START_NS + next(counter) * 1_000_000


def new_job() -> Job:
    return Job.new(
        project_id="proj-claims",
        source="/srv/projects/demo",
        modules=("a",),
        options=JobOptions(),
        trace=TraceContext.new(sampled=False),
        created_ns=START_NS,
    )


async def test_claim_takes_exactly_one_job_the_oldest(store: JobStore) -> None:
    workflow = JobWorkflow(store, JobTelemetry(), clock=clock())
    older = await workflow.create(new_job(), enqueue=True)
    newer = await workflow.create(new_job(), enqueue=True)

    claimed = await workflow.claim("w-1", lease_seconds=30)

    assert claimed is not None
    assert claimed.id == older.id
    assert (claimed.status, claimed.lease_owner) == (JobStatus.RUNNING, "w-1")
    assert (await store.get(newer.id)).status is JobStatus.QUEUED  # the other one stays queued
    assert await store.queue_depth() == 1


async def test_a_started_job_is_leased_to_its_worker_and_names_it_in_its_history(store: JobStore) -> None:
    tick = clock()
    workflow = JobWorkflow(store, JobTelemetry(), clock=tick)
    queued = await workflow.create(new_job(), enqueue=True)

    started = await workflow.start(queued, worker_id="w-7", lease_seconds=30)

    assert (started.status, started.lease_owner, started.worker_id) == (JobStatus.RUNNING, "w-7", "w-7")
    assert started.lease_expires_ns == started.status_ns + 30 * 10**9
    assert (await store.get(queued.id)) == started
    last = (await store.history(queued.id))[-1]
    assert (last.status_from, last.status_to, last.reason, last.worker_id) == (
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        "claimed",
        "w-7",
    )
