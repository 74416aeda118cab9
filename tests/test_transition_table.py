"""The status machine against an independent expectation.

The README's table (Architecture: the status machine) is written out here as literal
pairs, with the lifecycle event each emits. It is compared both ways with the Python
table (``TRANSITIONS``, ``is_legal``), with ``lifecycle_event()``, and with the
database's own ``job_transitions`` table on SQLite and PostgreSQL, read with SQL; the
database must also refuse every other status change by itself, whatever the Python
side asks (a bug there cannot store an illegal transition).
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from orchestrator.domain import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Job,
    JobOptions,
    JobStatus,
    TraceContext,
    Transition,
    is_legal,
    lifecycle_event,
)
from orchestrator.stores.base import JobStore
from orchestrator.stores.postgres import PostgresJobStore
from orchestrator.stores.sqlite import SQLiteJobStore

#: README: "Pending -> Queued -> Running -> Completed | Failed | Cancelled; Pending ->
#: Failed (could not be queued); Pending, Queued -> Cancelled; Running -> Queued (recovery
#: only)", and DESIGN.md's event names. Nothing else is legal.
LEGAL: dict[tuple[str, str], str] = {
    ("pending", "queued"): "job.lifecycle.enqueue",
    ("pending", "failed"): "job.lifecycle.fail",
    ("pending", "cancelled"): "job.lifecycle.cancel",
    ("queued", "running"): "job.lifecycle.start",
    ("queued", "cancelled"): "job.lifecycle.cancel",
    ("running", "completed"): "job.lifecycle.complete",
    ("running", "failed"): "job.lifecycle.fail",
    ("running", "cancelled"): "job.lifecycle.cancel",
    ("running", "queued"): "job.lifecycle.recover",
}
STATUSES = ("pending", "queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES = {"completed", "failed", "cancelled"}
#: The statuses a job may be written in when it is created (the paths its creator took).
CREATED_IN = {"pending", "queued", "running"}
ALL_PAIRS = list(itertools.product(STATUSES, STATUSES))
#: Changes of status that are not legal (a status "to itself" changes nothing: below).
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if a != b and (a, b) not in LEGAL]
#: A legal route from Pending to each status.
ROUTE = {
    "pending": (),
    "queued": ("queued",),
    "running": ("queued", "running"),
    "completed": ("queued", "running", "completed"),
    "failed": ("failed",),
    "cancelled": ("queued", "cancelled"),
}


def _python_pairs() -> set[tuple[str, str]]:
    return {(str(a), str(b)) for a, targets in TRANSITIONS.items() for b in targets}


# -- the Python side --------------------------------------------------------------------


def test_the_statuses_are_the_six_of_the_readme() -> None:
    assert [str(s) for s in JobStatus] == list(STATUSES)
    assert {str(s) for s in TERMINAL} == TERMINAL_STATUSES
    assert {str(s) for s in JobStatus if s.terminal} == TERMINAL_STATUSES


def test_the_python_table_allows_nothing_the_readme_does_not() -> None:
    assert _python_pairs() - set(LEGAL) == set()


def test_the_python_table_allows_everything_the_readme_does() -> None:
    assert set(LEGAL) - _python_pairs() == set()


@pytest.mark.parametrize(("status", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_is_legal_agrees_with_the_readme(status: str, target: str) -> None:
    assert is_legal(JobStatus(status), JobStatus(target)) is ((status, target) in LEGAL)


@pytest.mark.parametrize(("status", "target"), list(LEGAL), ids=[f"{a}->{b}" for a, b in LEGAL])
def test_each_legal_transition_emits_its_lifecycle_event(status: str, target: str) -> None:
    assert str(lifecycle_event(JobStatus(status), JobStatus(target))) == LEGAL[(status, target)]


def test_creation_and_a_cancel_request_have_events_of_their_own() -> None:
    assert str(lifecycle_event(None, JobStatus.PENDING)) == "job.lifecycle.create"
    assert str(lifecycle_event(JobStatus.RUNNING, JobStatus.RUNNING)) == "job.lifecycle.cancel_requested"


# -- the database -----------------------------------------------------------------------


def _database_table(store: JobStore, request: pytest.FixtureRequest) -> dict[tuple[str, str], str]:
    query = "SELECT status_from, status_to, event FROM job_transitions"
    if isinstance(store, SQLiteJobStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            rows = conn.execute(query).fetchall()
    else:
        assert isinstance(store, PostgresJobStore)
        with psycopg.connect(request.getfixturevalue("postgres_url")) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema or "public")))
            rows = conn.execute(query).fetchall()
    table = {(a, b): event for a, b, event in rows}
    assert len(table) == len(rows)
    return table


@pytest.mark.anyio
async def test_the_database_table_is_the_readme_table(store: JobStore, request: pytest.FixtureRequest) -> None:
    assert _database_table(store, request) == LEGAL


def _job() -> Job:
    return Job.new(
        project_id="proj-tt",
        source="/srv/projects/demo",
        modules=("a",),
        options=JobOptions(),
        trace=TraceContext.new(sampled=False),
    )


def _move(job: Job, target: str, at_ns: int) -> Transition:
    to = JobStatus(target)
    recovering = (job.status, to) == (JobStatus.RUNNING, JobStatus.QUEUED)
    return Transition(
        job_id=job.id,
        status_from=job.status,
        status_to=to,
        reason=f"test: {job.status} -> {target}",
        at_ns=at_ns,
        duration_ms=1.0,
        attempt=job.attempt,
        new_attempt=job.attempt + 1 if recovering else job.attempt,
    )


async def _job_in(store: JobStore, status: str) -> Job:
    job = await store.insert(_job())
    for i, step in enumerate(ROUTE[status], start=1):
        job = await store.apply(_move(job, step, job.created_ns + i * 1_000_000))
    assert str(job.status) == status
    return job


@pytest.mark.anyio
async def test_the_database_refuses_every_other_status_change(store: JobStore) -> None:
    """Straight to the store, past the workflow's check: each illegal change is refused
    as IllegalTransition, and neither the job nor its history moves."""
    outcomes: dict[tuple[str, str], object] = {}
    for status, target in ILLEGAL:
        job = await _job_in(store, status)
        history = await store.history(job.id)
        try:
            await store.apply(_move(job, target, job.status_ns + 1_000_000))
        except IllegalTransition as refused:
            outcomes[status, target] = (str(refused.current), str(refused.target))
        else:
            outcomes[status, target] = "applied"
        assert await store.get(job.id) == job
        assert await store.history(job.id) == history
    assert outcomes == {pair: pair for pair in ILLEGAL}


@pytest.mark.anyio
async def test_the_database_applies_every_legal_transition(store: JobStore) -> None:
    for status, target in LEGAL:
        job = await _job_in(store, status)
        moved = await store.apply(_move(job, target, job.status_ns + 1_000_000))
        assert str(moved.status) == target
        last = (await store.history(job.id))[-1]
        assert (str(last.status_from), str(last.status_to), str(last.event)) == (status, target, LEGAL[status, target])


@pytest.mark.anyio
@pytest.mark.parametrize("status", STATUSES)
async def test_the_database_creates_a_job_only_pending_queued_or_running(store: JobStore, status: str) -> None:
    base = _job()
    at = base.created_ns + 1_000_000
    job = replace(
        base,
        status=JobStatus(status),
        status_ns=at,
        queued_ns=at,
        started_ns=at if status == "running" else None,
        finished_ns=at if status in TERMINAL_STATUSES else None,
        reason=f"created {status}",
    )
    if status in CREATED_IN:
        assert str((await store.insert(job)).status) == status
    else:
        with pytest.raises(IllegalTransition):
            await store.insert(job)
        assert await store.list_jobs() == []


@pytest.mark.anyio
async def test_the_database_refuses_a_status_change_to_the_same_status(store: JobStore) -> None:
    job = await _job_in(store, "completed")
    with pytest.raises(IllegalTransition):
        await store.apply(_move(job, "completed", job.status_ns + 1_000_000))
    assert await store.get(job.id) == job
