"""The store's transition code, on both databases, where the mutation run found gaps: a
group of terminal transitions is written by one statement that succeeds (not by the
one-by-one fallback, which would hide a broken group statement), a lost compare-and-set names its
job, a claimed batch comes back in queue order, and an unknown job is named."""

from __future__ import annotations

import json
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


async def test_a_group_of_terminal_transitions_is_written_by_one_successful_statement(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(store, SQLJobStore)
    jobs = await running_jobs(store, 12)
    statements: list[tuple[str, int, bool, int]] = []  # (query, transitions sent, succeeded, rows back)
    fetchall = store.connector.fetchall

    async def recording(name: str, params: Any = None, **options: Any) -> Any:
        sent = len(json.loads(params["transitions"])) if name == "apply_transitions" else 1
        try:
            found = await fetchall(name, params, **options)
        except BaseException:
            statements.append((name, sent, False, 0))
            raise
        statements.append((name, sent, True, len(found)))
        return found

    monkeypatch.setattr(store.connector, "fetchall", recording)
    outcomes = await apply_together(store, [finish(job) for job in jobs])

    assert all(isinstance(outcomes[job.id], tuple) for job in jobs), outcomes
    grouped = [s for s in statements if s[0] == "apply_transitions"]
    assert grouped, f"no group was written together: {statements}"
    for _, sent, ok, back in grouped:
        assert ok, f"a group's statement failed and was applied one by one: {statements}"
        assert sent > 1
        assert back == sent  # every job of the group written by that one statement, its row returned
    # each job written exactly once: by a group or alone, nothing else ran
    assert sum(s[1] for s in statements) == len(jobs), statements
    assert {s[0] for s in statements} <= {"apply_transitions", "apply_transition"}


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


async def test_a_group_statement_writes_exactly_what_each_transition_alone_writes(store: JobStore) -> None:
    """``apply_transitions`` (a group) against ``apply_transition`` (one at a time), on twin
    jobs: the same stored rows, the same returned jobs and histories, the same refusals.
    Kinds: completed with results and history, failed with a category and phase, a
    cancel-requested job that may only end Cancelled (refused otherwise), a lost
    compare-and-set, a cancel-requested job ending Cancelled, a sampled job's emitter stamp."""
    from test_store_grouping import RecordingStamps

    from orchestrator.domain import ErrorCategory, Phase

    assert isinstance(store, SQLJobStore)
    store.root_stamps = RecordingStamps()
    grouped, alone = await running_jobs(store, 6), await running_jobs(store, 6)
    for pair in (grouped, alone):
        for job in (pair[2], pair[4]):
            await store.request_cancel(job.id, "stop it", requested_by="tester", at_ns=NS + 1)

    def kinds(jobs: list[Job]) -> list[tuple[Transition, bool]]:
        a, b, c, d, e, f = jobs
        return [
            (finish(a), True),
            (finish(b, JobStatus.FAILED, error_category=ErrorCategory.MODULE, error_phase=Phase.EXECUTE), False),
            (finish(c), True),  # cancel requested: may only end Cancelled
            (finish(d, attempt=d.attempt + 1, new_attempt=d.attempt + 1), False),  # a lost compare-and-set
            (finish(e, JobStatus.CANCELLED, results=()), True),
            (finish(f, reason="a reason with\\nnewlines and é"), True),
        ]

    together = await store._apply_group(kinds(grouped))
    one_by_one = [await store._apply_group([pair]) for pair in kinds(alone)]

    def shape(outcome: Any) -> Any:
        if isinstance(outcome, BaseException):
            return type(outcome).__name__
        job, history = outcome
        return (
            job.status,
            job.reason.replace(job.id, "<id>"),
            job.error_category,
            job.error_phase,
            [(r.module, r.outcome, r.summary["n"] == job.id) for r in job.results],
            [(h.status_from, h.status_to, h.reason.replace(job.id, "<id>")) for h in history],
        )

    assert [shape(o) for o in together] == [shape(o[0]) for o in one_by_one]
    assert [type(o).__name__ for o in together].count("CancelPending") == 1
    assert [type(o).__name__ for o in together].count("TransitionConflict") == 1

    ignored = {
        "id",
        "status_ns",
        "finished_ns",
        "created_ns",
        "queued_ns",
        "started_ns",
        "trace_id",
        "root_span_id",
        "trace_seq",
        "results",
        "trace_lost_ns",
        "lease_expires_ns",
    }
    for g, a in zip(grouped, alone, strict=True):
        row_g = dict(await store.connector.fetchone("get_job", {"id": g.id}) or {})
        row_a = dict(await store.connector.fetchone("get_job", {"id": a.id}) or {})
        assert {k: v for k, v in row_g.items() if k not in ignored} == {
            k: (v.replace(a.id, g.id) if isinstance(v, str) else v) for k, v in row_a.items() if k not in ignored
        }
        for when in ("trace_lost_ns", "lease_expires_ns", "finished_ns"):  # times: set alike or not
            assert (row_g[when] is None) == (row_a[when] is None), when
        assert [(h.event, h.status_from, h.status_to) for h in await store.history(g.id)] == [
            (h.event, h.status_from, h.status_to) for h in await store.history(a.id)
        ]
