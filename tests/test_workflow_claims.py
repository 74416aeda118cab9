"""Claiming, starting and creating through the workflow, on both stores: ``claim`` takes
exactly one job (the oldest); a started job, or one created started, is leased to its
worker, who is named in its history; a terminal transition keeps the module results; the
time spent in a status is reported by the workflow's clock."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.domain import Job, JobOptions, JobStatus, ModuleOutcome, ModuleResult, TraceContext
from orchestrator.stores.base import JobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow
from otel.logs import EVENT_KEY, record_fields

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


async def test_a_job_created_started_is_stored_leased_to_its_worker(store: JobStore) -> None:
    """``orchestrator run``'s path: Pending -> Queued -> Running in one write."""
    workflow = JobWorkflow(store, JobTelemetry(), clock=clock())
    job = new_job()

    running = await workflow.create_started(job, worker_id="w-run", lease_seconds=30)

    stored = await store.get(job.id)
    assert stored == running
    assert (stored.status, stored.attempt, stored.worker_id, stored.lease_owner) == (
        JobStatus.RUNNING,
        1,
        "w-run",
        "w-run",
    )
    assert stored.queued_ns is not None
    assert stored.started_ns == stored.status_ns > stored.queued_ns > job.created_ns
    assert stored.lease_expires_ns == stored.started_ns + 30 * 10**9
    history = await store.history(job.id)
    assert [(e.status_to, e.worker_id) for e in history] == [
        (JobStatus.PENDING, None),
        (JobStatus.QUEUED, None),
        (JobStatus.RUNNING, "w-run"),
    ]


async def test_a_job_created_enqueued_is_stored_queued_not_started(store: JobStore) -> None:
    workflow = JobWorkflow(store, JobTelemetry(), clock=clock())
    queued = await workflow.create(new_job(), enqueue=True)
    stored = await store.get(queued.id)
    assert stored == queued
    assert (stored.status, stored.reason, stored.started_ns, stored.lease_owner) == (
        JobStatus.QUEUED,
        "enqueued",
        None,
        None,
    )
    assert stored.queued_ns == stored.status_ns


async def test_a_terminal_transition_stores_the_module_results(store: JobStore) -> None:
    workflow = JobWorkflow(store, JobTelemetry(), clock=clock())
    running = await workflow.create_started(new_job(), worker_id="w", lease_seconds=30)
    result = ModuleResult(
        module="a",
        version="1",
        outcome=ModuleOutcome.OK,
        started_ns=START_NS,
        duration_ms=1.0,
        expected_ms=10.0,
        timeout_ms=20.0,
        attempt=1,
        summary={"files": 3},
    )
    done = await workflow.transition(running, JobStatus.COMPLETED, reason="done", results=(result,), worker_id="w")
    assert done.results == (result,)
    assert (await store.get(running.id)).results == (result,)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def cancel_records(workflow: JobWorkflow, queued: Job) -> list[dict[str, Any]]:
    """The fields of the lifecycle records ``queued``'s cancellation writes."""
    logger = logging.getLogger("orchestrator.lifecycle")
    records, level, disabled = Records(), logger.level, logger.disabled
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        await workflow.transition(queued, JobStatus.CANCELLED, reason="not needed")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        logger.disabled = disabled
    return [record_fields(r) for r in records.records if getattr(r, EVENT_KEY, None) == "job.lifecycle.cancel"]


async def test_a_transition_reports_the_time_spent_in_the_status_it_leaves(store: JobStore) -> None:
    """The log record (and the phase-duration metric, from the same number) says how long
    the job was in its status, by the workflow's clock: 7 ms here."""
    ticks = iter(START_NS + n * 7_000_000 for n in itertools.count(1))
    workflow = JobWorkflow(store, JobTelemetry(), clock=lambda: next(ticks))
    queued = await workflow.create(new_job(), enqueue=True)
    fields = await cancel_records(workflow, queued)
    assert [(f["status_from"], f["status_to"], f["duration_ms"]) for f in fields] == [("queued", "cancelled", 7.0)]


async def test_a_transition_in_the_same_instant_spent_no_time(store: JobStore) -> None:
    workflow = JobWorkflow(store, JobTelemetry(), clock=lambda: START_NS)
    queued = await workflow.create(new_job(), enqueue=True)
    fields = await cancel_records(workflow, queued)
    assert [f["duration_ms"] for f in fields] == [0.0]
