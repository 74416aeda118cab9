"""One write where several were: a job is inserted in the status it reached (Queued when
created and enqueued, Running when its creator runs it) and the database writes the history
of the path it took and the outbox rows, exactly as an insert followed by the transitions
would; a transition returning the history (``apply_with_history``, for the root span)
returns what a separate read would; and the database itself refuses illegal transitions."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import pytest

from orchestrator.domain import (
    IllegalTransition,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    PersistenceError,
    TraceContext,
    Transition,
    TransitionConflict,
    now_ns,
)
from orchestrator.domain.values import canonical_text
from orchestrator.stores.base import JobStore
from orchestrator.stores.core import SQLJobStore
from orchestrator.webhooks.models import Subscription
from orchestrator.webhooks.store import webhook_store

pytestmark = pytest.mark.anyio


def _job(project_id: str) -> Job:
    return Job.new(project_id=project_id, source="/srv/repo", modules=("a", "b"), options=JobOptions(),
                   trace=TraceContext.new(link="00-" + "1" * 32 + "-" + "2" * 16 + "-01"))


def _enqueue(job: Job) -> Transition:
    at = now_ns()
    return Transition(job.id, JobStatus.PENDING, JobStatus.QUEUED, "enqueued", at, (at - job.created_ns) / 1e6, 1, 1)


def _queued(job: Job, t: Transition) -> Job:
    return dataclasses.replace(job, status=JobStatus.QUEUED, status_ns=t.at_ns, queued_ns=t.at_ns, reason=t.reason)


async def test_inserting_a_queued_job_matches_insert_then_apply(store: JobStore) -> None:
    hooks = webhook_store(store)
    await hooks.add_subscription(Subscription("sub1", "proj", "https://example.com/h", "s3cret",
                                              ("job.lifecycle.enqueue",), now_ns()))
    two_steps, one_write = _job("proj"), _job("proj")

    await store.insert(two_steps)
    t1 = _enqueue(two_steps)
    applied = await store.apply(t1)
    t2 = _enqueue(one_write)
    created = await store.insert(_queued(one_write, t2))

    assert created.status is JobStatus.QUEUED
    assert created == await store.get(one_write.id)
    same = {"id", "created_ns", "status_ns", "queued_ns", "trace"}
    assert {k: v for k, v in dataclasses.asdict(created).items() if k not in same} == {
        k: v for k, v in dataclasses.asdict(applied).items() if k not in same
    }
    assert (created.status_ns, created.queued_ns, created.trace) == (t2.at_ns, t2.at_ns, one_write.trace)

    for job, t in ((two_steps, t1), (one_write, t2)):
        history = await store.history(job.id)
        assert [(e.seq, e.status_from, e.status_to, e.reason, e.attempt, e.worker_id, e.event) for e in history] == [
            (1, None, JobStatus.PENDING, "created", 1, None, "job.lifecycle.create"),
            (2, JobStatus.PENDING, JobStatus.QUEUED, "enqueued", 1, None, "job.lifecycle.enqueue"),
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
    assert first == second == {
        "event": "job.lifecycle.enqueue",
        "project_id": "proj",
        "status_from": "pending",
        "status_to": "queued",
        "reason": "enqueued",
        "attempt": 1,
    }


async def test_inserting_a_running_job_writes_the_whole_path_and_no_one_can_claim_it_first(store: JobStore) -> None:
    job = _job("proj")
    enqueue = _enqueue(job)
    queued = _queued(job, enqueue)
    at = enqueue.at_ns + 5_000_000
    running = dataclasses.replace(queued, status=JobStatus.RUNNING, status_ns=at, started_ns=at, reason="claimed",
                                  worker_id="run-1", lease_owner="run-1", lease_expires_ns=at + 30 * 10**9)
    stored = await store.insert(running)

    assert (stored.status, stored.lease_owner, stored.worker_id) == (JobStatus.RUNNING, "run-1", "run-1")
    assert await store.claim(worker_id="other", lease_ns=10**9, now_ns=at + 1) is None
    history = await store.history(job.id)
    assert [(e.status_from, e.status_to, e.reason, e.worker_id, e.at_ns) for e in history] == [
        (None, JobStatus.PENDING, "created", None, job.created_ns),
        (JobStatus.PENDING, JobStatus.QUEUED, "enqueued", None, enqueue.at_ns),
        (JobStatus.QUEUED, JobStatus.RUNNING, "claimed", "run-1", at),
    ]
    assert history[2].duration_ms == pytest.approx(5.0)


async def test_a_job_cannot_be_inserted_finished(store: JobStore) -> None:
    job = dataclasses.replace(_job("proj"), status=JobStatus.COMPLETED)
    with pytest.raises(IllegalTransition):
        await store.insert(job)
    assert await store.list_jobs() == []


async def test_the_database_refuses_an_illegal_transition_even_when_asked_directly(store: JobStore) -> None:
    job = _job("proj")
    await store.insert(_queued(job, _enqueue(job)))
    # Queued -> Completed is not in the transition table: the workflow never asks for it,
    # and the database refuses it if a bug ever did.
    illegal = Transition(job.id, JobStatus.QUEUED, JobStatus.COMPLETED, "skip the work", now_ns(), 1.0, 1, 1)
    with pytest.raises(IllegalTransition):
        await store.apply(illegal)
    assert (await store.get(job.id)).status is JobStatus.QUEUED
    assert len(await store.history(job.id)) == 2


async def test_a_failed_insert_writes_nothing(store: JobStore) -> None:
    job = _job("proj")
    await store.insert(_queued(job, _enqueue(job)))
    again = dataclasses.replace(job, created_ns=job.created_ns + 1)
    with pytest.raises(PersistenceError):  # the duplicate id
        await store.insert(_queued(again, _enqueue(again)))
    assert [e.seq for e in await store.history(job.id)] == [1, 2]


async def test_apply_with_history_returns_what_apply_then_history_would(store: JobStore) -> None:
    job = _job("proj")
    queued = await store.insert(_queued(job, _enqueue(job)))
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
    # The database derives the time spent from the stored timestamps: it cannot disagree with them.
    assert (history[-1].at_ns, history[-1].worker_id) == (at, "w1")
    assert history[-1].duration_ms == pytest.approx((at - running.status_ns) / 1e6)


async def test_apply_with_history_refuses_a_stale_transition_like_apply(store: JobStore) -> None:
    job = _job("proj")
    await store.insert(_queued(job, _enqueue(job)))
    stale = Transition(job.id, JobStatus.RUNNING, JobStatus.COMPLETED, "stale", now_ns(), 1.0, 1, 1)
    with pytest.raises(TransitionConflict):
        await store.apply_with_history(stale)
    assert len(await store.history(job.id)) == 2


# -- new jobs inserted together ---------------------------------------------------------------


class HeldInserts:
    """Wraps a store's connector: records the statements run and, until ``release`` is
    set, keeps a lone insert in flight so that the inserts arriving meanwhile queue up.
    ``hold_group`` (set it to an event) holds the group's statement until it is set (and
    sets ``group_entered``); ``fail_group`` fails it before it runs; ``held_alone`` holds
    the lone inserts of those job ids (after the first) until ``release_alone`` is set."""

    def __init__(self, store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(store, SQLJobStore)
        self.names: list[str] = []
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.fail_after_group = False
        self.fail_group = False
        self.hold_group: anyio.Event | None = None
        self.group_entered = anyio.Event()
        self.held_alone: set[str] = set()
        self.alone_entered = anyio.Event()
        self.release_alone = anyio.Event()
        connector = store.connector
        fetchone, fetchall = connector.fetchone, connector.fetchall

        async def held_fetchone(name: str, params: Any = None) -> Any:
            self.names.append(name)
            if name == "insert_job" and not self.release.is_set():
                self.entered.set()
                await self.release.wait()
            elif name == "insert_job" and params["id"] in self.held_alone:
                self.alone_entered.set()
                await self.release_alone.wait()
            return await fetchone(name, params)

        async def failing_fetchall(name: str, params: Any = None, **options: Any) -> Any:
            if name == "insert_jobs":  # (a connector's fetchone may run its fetchall)
                self.names.append(name)
                self.group_entered.set()
                if self.hold_group is not None:
                    await self.hold_group.wait()
                if self.fail_group:
                    raise PersistenceError("connection lost", transient=True)  # before anything was sent
            rows = await fetchall(name, params, **options)
            if name == "insert_jobs" and self.fail_after_group:
                # Stored and committed, but the answer is lost on the way back.
                raise PersistenceError("connection lost", transient=True)
            return rows

        monkeypatch.setattr(connector, "fetchone", held_fetchone)
        monkeypatch.setattr(connector, "fetchall", failing_fetchall)


async def insert_together(
    store: JobStore,
    held: HeldInserts,
    first: Job,
    jobs: list[Job],
    *,
    scopes: Mapping[str, anyio.CancelScope] | None = None,
    meanwhile: Callable[[dict[str, object]], Awaitable[None]] | None = None,
) -> dict[str, object]:
    """Insert ``first`` (held in flight), then ``jobs`` while it is: outcome by job id
    ("cancelled" for a caller whose scope in ``scopes`` ended it). ``meanwhile`` runs once
    ``first`` is released, with the outcomes so far, while the others are inserted."""
    outcomes: dict[str, object] = {}

    async def one(job: Job) -> None:
        with (scopes or {}).get(job.id) or anyio.CancelScope():
            try:
                outcomes[job.id] = await store.insert(job)
            except Exception as exc:
                outcomes[job.id] = exc
            return
        outcomes[job.id] = "cancelled"

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, first)
            await held.entered.wait()
            for job in jobs:
                tg.start_soon(one, job)
            await anyio.wait_all_tasks_blocked()
            held.release.set()
            if meanwhile is not None:
                await meanwhile(outcomes)
    return outcomes


def _masked(job: Job) -> dict[str, Any]:
    """A stored job without what differs between two jobs made alike (ids, times, trace)."""
    return {k: v for k, v in dataclasses.asdict(job).items() if k not in {"id", "created_ns", "status_ns",
                                                                           "queued_ns", "trace"}}


async def test_new_jobs_arriving_while_one_is_inserted_go_together_stored_as_alone(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = webhook_store(store)
    await hooks.add_subscription(Subscription("sub1", "proj", "https://example.com/h", "s3cret",
                                              ("job.lifecycle.enqueue",), now_ns()))
    held = HeldInserts(store, monkeypatch)
    first = _job("proj")
    jobs = [_job("proj") for _ in range(5)]
    queued = {job.id: _queued(job, _enqueue(job)) for job in (first, *jobs)}

    outcomes = await insert_together(store, held, queued[first.id], [queued[job.id] for job in jobs])

    # The lone one at once, the five that arrived meanwhile in one statement.
    assert held.names.count("insert_job") == 1
    assert held.names.count("insert_jobs") == 1
    alone = outcomes[first.id]
    assert isinstance(alone, Job)
    for job in jobs:
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored
        assert stored == await store.get(job.id)
        assert _masked(stored) == _masked(alone)  # stored exactly as a job inserted alone
        assert (stored.created_ns, stored.queued_ns, stored.trace) == (job.created_ns, queued[job.id].queued_ns,
                                                                        job.trace)
        # Its own history and outbox rows, as the insert of a lone job writes them.
        history = await store.history(job.id)
        assert [(e.seq, e.status_from, e.status_to, e.reason, e.event, e.at_ns) for e in history] == [
            (1, None, JobStatus.PENDING, "created", "job.lifecycle.create", job.created_ns),
            (2, JobStatus.PENDING, JobStatus.QUEUED, "enqueued", "job.lifecycle.enqueue", queued[job.id].queued_ns),
        ]
        deliveries = await hooks.list_deliveries(job_id=job.id)
        assert [(d.subscription_id, d.event, d.payload["job_id"]) for d in deliveries] == [
            ("sub1", "job.lifecycle.enqueue", job.id)
        ]
    # And a worker claims them all, oldest first.
    claimed = await store.claim_batch(worker_id="w1", lease_ns=30 * 10**9, now_ns=now_ns(), limit=10)
    assert {job.id for job in claimed} == {first.id, *(job.id for job in jobs)}


async def test_a_new_job_the_database_refuses_in_a_group_fails_only_its_caller(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = _job("proj")
    await store.insert(_queued(existing, _enqueue(existing)))
    held = HeldInserts(store, monkeypatch)
    first, good = _job("proj"), [_job("proj") for _ in range(3)]
    finished = dataclasses.replace(_job("proj"), status=JobStatus.COMPLETED)  # the schema refuses it
    again = dataclasses.replace(existing, created_ns=existing.created_ns + 1)  # an id already taken

    outcomes = await insert_together(
        store, held, first, [good[0], finished, good[1], _queued(again, _enqueue(again)), good[2]]
    )

    assert isinstance(outcomes[finished.id], IllegalTransition)
    duplicate = outcomes[existing.id]
    assert isinstance(duplicate, PersistenceError), duplicate
    assert not isinstance(duplicate, IllegalTransition), duplicate
    for job in (first, *good):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored
        assert stored == await store.get(job.id)
        assert [e.status_to for e in await store.history(job.id)] == [JobStatus.PENDING]
    with pytest.raises(JobNotFound):
        await store.get(finished.id)
    # The job that held the id is as it was.
    assert (await store.get(existing.id)).created_ns == existing.created_ns
    assert [e.seq for e in await store.history(existing.id)] == [1, 2]


async def test_a_group_stored_before_its_answer_was_lost_is_stored_once(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldInserts(store, monkeypatch)
    held.fail_after_group = True
    first, jobs = _job("proj"), [_job("proj") for _ in range(4)]

    outcomes = await insert_together(store, held, first, jobs)

    assert held.names.count("insert_jobs") == 1
    for job in (first, *jobs):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored  # found stored: no duplicate-id error
        assert stored == await store.get(job.id)
        assert [e.seq for e in await store.history(job.id)] == [1]
    assert len(await store.list_jobs()) == 5


ODD_TEXT = [
    "", 'a "quoted" word', "back\\slash and \\u0041 written out", "ünïcödé ✓ 🎉", "tab\tnewline\ncr\r",
    "null", "[1, 2]", '{"k": 1}', "\u200b\u202eRTL", "x" * 10_000, canonical_text("lone \udc80 surrogate"),
    canonical_text("a NUL \x00 inside"),
]


async def test_odd_values_are_stored_in_a_group_exactly_as_alone(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def odd_job(text: str) -> Job:
        options = JobOptions(module_options={"a": {"text": text, "nested": [text, {text: -0.0}], "n": 2**62}},
                             ignore=(text or "x",))
        job = Job.new(project_id=f"p{text}", source=f"/srv/{text}", modules=("a", "b"), options=options,
                      trace=TraceContext.new(link=None))
        return _queued(job, _enqueue(job))

    alone = [await store.insert(odd_job(text)) for text in ODD_TEXT]
    held = HeldInserts(store, monkeypatch)
    grouped = [odd_job(text) for text in ODD_TEXT]

    outcomes = await insert_together(store, held, odd_job("first"), grouped)

    assert held.names.count("insert_jobs") == 1
    for reference, job in zip(alone, grouped, strict=True):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored
        assert stored == await store.get(job.id)
        assert _masked(stored) == _masked(reference)
        assert stored.project_id == reference.project_id
        assert stored.options == reference.options


# -- cancellation, failures and deadlines of grouped inserts ------------------------------------


async def test_a_job_inserted_alone_can_be_cancelled_as_without_grouping(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldInserts(store, monkeypatch)
    job = _job("proj")
    ended = anyio.Event()
    outcome: list[object] = []

    async def insert(scope: anyio.CancelScope) -> None:
        with scope:
            outcome.append(await store.insert(job))
        ended.set()

    scope = anyio.CancelScope()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(insert, scope)
            await held.entered.wait()  # in flight, alone
            scope.cancel()
            with anyio.move_on_after(10):
                await ended.wait()
            assert ended.is_set(), "the cancelled insert kept waiting for the database"
    finally:
        held.release.set()  # (a shielded insert would be waiting here)
    assert outcome == []
    with pytest.raises(JobNotFound):
        await store.get(job.id)


async def test_a_caller_cancelled_while_its_group_is_written_gets_its_stored_job(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldInserts(store, monkeypatch)
    held.hold_group = anyio.Event()
    first, a, b = _job("proj"), _job("proj"), _job("proj")
    b_scope = anyio.CancelScope()

    async def cancel_b_while_written(_: dict[str, object]) -> None:
        await held.group_entered.wait()  # a and b are being written, together
        b_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert held.hold_group is not None
        held.hold_group.set()

    outcomes = await insert_together(
        store, held, first, [a, b], scopes={b.id: b_scope}, meanwhile=cancel_b_while_written
    )

    assert held.names.count("insert_jobs") == 1
    for job in (first, a, b):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), (job.id, stored)  # b's caller learns its job was stored
        assert stored == await store.get(job.id)


async def test_a_failed_group_is_inserted_by_each_caller_in_its_own_task(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldInserts(store, monkeypatch)
    held.fail_group = True
    first, jobs = _job("proj"), [_job("proj") for _ in range(3)]
    held.held_alone = {jobs[0].id}  # the group's leader: its own insert alone is held
    done: set[str] = set()

    async def others_end_while_the_leader_is_held(outcomes: dict[str, object]) -> None:
        await held.alone_entered.wait()
        with anyio.move_on_after(10):
            while not all(job.id in outcomes for job in jobs[1:]):
                await anyio.sleep(0.01)
        done.update(outcomes)
        held.release_alone.set()

    outcomes = await insert_together(store, held, first, jobs, meanwhile=others_end_while_the_leader_is_held)

    assert done == {first.id, jobs[1].id, jobs[2].id}
    assert held.names.count("insert_jobs") == 1
    for job in (first, *jobs):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored
        assert stored == await store.get(job.id)
        assert [e.seq for e in await store.history(job.id)] == [1]


async def test_the_same_job_inserted_again_is_refused_in_a_group_as_alone(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = _queued(job := _job("proj"), _enqueue(job))
    await store.insert(existing)
    with pytest.raises(PersistenceError) as alone:
        await store.insert(existing)
    held = HeldInserts(store, monkeypatch)
    good = _job("proj")

    outcomes = await insert_together(store, held, _job("proj"), [good, existing])

    assert held.names.count("insert_jobs") == 1
    assert type(outcomes[existing.id]) is type(alone.value), outcomes[existing.id]
    assert outcomes[good.id] == await store.get(good.id)
    assert [e.seq for e in await store.history(existing.id)] == [1, 2]


async def test_a_group_past_its_deadline_is_inserted_job_by_job_once_each(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.stores.core.INSERT_GROUP_SECONDS", 0.2)
    held = HeldInserts(store, monkeypatch)
    held.hold_group = anyio.Event()  # never set: a lock held for good
    first, jobs = _job("proj"), [_job("proj") for _ in range(3)]

    outcomes = await insert_together(store, held, first, jobs)

    assert held.names.count("insert_jobs") == 1
    for job in (first, *jobs):
        stored = outcomes[job.id]
        assert isinstance(stored, Job), stored
        assert stored == await store.get(job.id)
        assert [e.seq for e in await store.history(job.id)] == [1]
    assert len(await store.list_jobs()) == 4
