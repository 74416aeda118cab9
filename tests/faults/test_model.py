"""Model-based test: a hypothesis state machine drives two workers' worth of operations
against a REAL SQLite store (a fresh file per example) and checks it against a model.

Rules: submit, worker A/B claim, a worker finishes a job it claimed (completed, failed
or cancelled; with attempt fencing), cancel (workflow.cancel), a lease expires and the
reaper recovers the job, a worker renews its leases, and a stale worker (whose job was
recovered or finished meanwhile) tries to finish it and must get TransitionConflict.
Invariants after every step: the store equals the model; no job is Running without a
lease owner; every history is a legal path; terminal jobs never change; attempts only
grow.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio.from_thread
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

from orchestrator.domain import (
    IllegalTransition,
    Job,
    JobOptions,
    JobStatus,
    TraceContext,
    TransitionConflict,
    is_legal,
)
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow

WORKERS = ("A", "B")
MAX_ATTEMPTS = 3
LEASE_S = 30.0


class Clock:
    """A strictly increasing fake clock (ns), so queue order and lease expiry are ours."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


@dataclass
class ModelJob:
    status: JobStatus
    attempt: int = 1
    owner: str | None = None
    cancel_requested: str | None = None
    queue_seq: int = 0
    history: list[tuple[JobStatus | None, JobStatus]] = field(default_factory=list)


class JobStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        folder = Path(self._exit.enter_context(tempfile.TemporaryDirectory(prefix="model-")))
        self.portal = self._exit.enter_context(anyio.from_thread.start_blocking_portal())
        self.clock = Clock()
        self.store = SQLiteJobStore(folder / "jobs.db")
        self.portal.call(self.store.open)
        self.workflow = JobWorkflow(
            self.store, JobTelemetry(NoOpTracerProvider(), NoOpMeterProvider()), clock=self.clock
        )
        self.source = str(folder)
        self.model: dict[str, ModelJob] = {}
        self.seq = 0
        #: every snapshot each worker ever claimed (a stale one must be fenced off)
        self.claimed: dict[str, list[Job]] = {w: [] for w in WORKERS}
        self.finished: dict[str, tuple[str, int, int]] = {}  # terminal jobs: (status, attempt, history length)
        self.attempts_seen: dict[str, int] = {}
        self.steps: dict[str, int] = {}

    def teardown(self) -> None:
        try:
            self.portal.call(self.store.close)
        finally:
            self._exit.close()

    def _count(self, what: str) -> None:
        self.steps[what] = self.steps.get(what, 0) + 1
        STATS[what] = STATS.get(what, 0) + 1

    def _enqueued(self, job_id: str) -> None:
        self.seq += 1
        self.model[job_id].queue_seq = self.seq

    # -- rules ------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        """Every example starts with a job whose lease expired under worker A (recovered,
        attempt 2) and A's stale view of it, so the fencing rules have work from step one
        (the random rule mix alone may leave them idle in a short run)."""
        self._count("examples")
        self.submit(pending=False)
        self.claim("A")
        (job_id,) = self.model
        self.lease_expires_for(job_id)
        with pytest.raises(TransitionConflict):
            self.portal.call(
                lambda: self.workflow.transition(self.claimed["A"][0], JobStatus.COMPLETED, reason="stale")
            )
        self._count("stale finish fenced off")

    @rule(pending=st.booleans())
    def submit(self, pending: bool) -> None:
        job = Job.new(
            project_id="model",
            source=self.source,
            modules=("noop",),
            options=JobOptions(),
            trace=TraceContext.new(),
            created_ns=self.clock(),
        )
        job = self.portal.call(self.workflow.create, job)
        self.model[job.id] = ModelJob(JobStatus.PENDING, history=[(None, JobStatus.PENDING)])
        if not pending:
            self.portal.call(lambda: self.workflow.transition(job, JobStatus.QUEUED, reason="enqueued"))
            self.model[job.id].status = JobStatus.QUEUED
            self.model[job.id].history.append((JobStatus.PENDING, JobStatus.QUEUED))
            self._enqueued(job.id)
        self._count("submit")

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        got = self.portal.call(lambda: self.workflow.claim(worker, lease_seconds=LEASE_S))
        queued = [(m.queue_seq, job_id) for job_id, m in self.model.items() if m.status is JobStatus.QUEUED]
        if not queued:
            assert got is None
            return
        expected = min(queued)[1]
        assert got is not None
        assert got.id == expected, "claimed out of queue order"
        m = self.model[expected]
        m.status, m.owner = JobStatus.RUNNING, worker
        m.history.append((JobStatus.QUEUED, JobStatus.RUNNING))
        assert got.attempt == m.attempt
        assert got.lease_owner == worker
        self.claimed[worker].append(got)
        self._count("claim")

    @rule(
        worker=st.sampled_from(WORKERS),
        outcome=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]),
        data=st.data(),
    )
    def finish(self, worker: str, outcome: JobStatus, data: st.DataObject) -> None:
        """The worker finishes one of the jobs it claimed, as it saw it then."""
        if not self.claimed[worker]:
            return
        snapshot = data.draw(st.sampled_from(self.claimed[worker]))
        m = self.model[snapshot.id]
        current = m.status is JobStatus.RUNNING and m.attempt == snapshot.attempt and m.owner == worker
        try:
            self.portal.call(
                lambda: self.workflow.transition(snapshot, outcome, reason=f"finished by {worker}", worker_id=worker)
            )
        except TransitionConflict:
            assert not current, "a current owner was refused"
            self._count("finish refused (stale)")
            return
        assert current, f"a stale worker finished job {snapshot.id}: model {m}, attempt {snapshot.attempt}"
        if m.cancel_requested:  # a flagged job can only end Cancelled, whatever it was about to become
            outcome = JobStatus.CANCELLED
        m.status, m.owner, m.cancel_requested = outcome, None, None
        m.history.append((JobStatus.RUNNING, outcome))
        self._count(f"finish {outcome}")

    @precondition(lambda self: any(self._stale(w) for w in WORKERS))
    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def stale_worker_finishes(self, worker: str, data: st.DataObject) -> None:
        stale = self._stale(worker)
        if not stale:
            return
        snapshot = data.draw(st.sampled_from(stale))
        with pytest.raises(TransitionConflict):
            self.portal.call(lambda: self.workflow.transition(snapshot, JobStatus.COMPLETED, reason="stale"))
        self._count("stale finish fenced off")

    def _stale(self, worker: str) -> list[Job]:
        return [
            s
            for s in self.claimed[worker]
            if not (self.model[s.id].status is JobStatus.RUNNING and self.model[s.id].attempt == s.attempt)
        ]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.model)))
        m = self.model[job_id]
        try:
            after = self.portal.call(lambda: self.workflow.cancel(job_id, reason="user cancel"))
        except TransitionConflict:
            raise AssertionError(f"cancel of {job_id} kept losing races in a single-threaded run") from None
        except IllegalTransition:
            assert m.status.terminal, f"cancel refused for a {m.status} job"
            self._count("cancel refused (terminal)")
            return
        assert not m.status.terminal
        if m.status is JobStatus.RUNNING:
            assert after.status is JobStatus.RUNNING
            if m.cancel_requested is None:  # the first request is recorded in the history
                m.history.append((JobStatus.RUNNING, JobStatus.RUNNING))
            m.cancel_requested = "user cancel"
            self._count("cancel flagged (running)")
        else:
            m.history.append((m.status, JobStatus.CANCELLED))
            m.status = JobStatus.CANCELLED
            self._count("cancel immediate")

    @precondition(lambda self: any(m.status is JobStatus.RUNNING for m in self.model.values()))
    @rule(data=st.data())
    def lease_expires(self, data: st.DataObject) -> None:
        running = sorted(j for j, m in self.model.items() if m.status is JobStatus.RUNNING)
        self.lease_expires_for(data.draw(st.sampled_from(running)))

    def lease_expires_for(self, job_id: str) -> None:
        job = self.portal.call(self.store.get, job_id)
        assert job.lease_expires_ns is not None
        expired = self.portal.call(lambda: self.store.expired(now_ns=job.lease_expires_ns + 1, limit=1000))
        assert job_id in {j.id for j in expired}
        self.clock.now = max(self.clock.now, job.lease_expires_ns + 1)  # time passes: the lease expires
        after = self.portal.call(lambda: self.workflow.recover(job, max_attempts=MAX_ATTEMPTS, worker_id="reaper"))
        m = self.model[job_id]
        m.owner = None
        if m.cancel_requested:
            target = JobStatus.CANCELLED
        elif m.attempt >= MAX_ATTEMPTS:
            target = JobStatus.FAILED
        else:
            target = JobStatus.QUEUED
            m.attempt += 1
            self._enqueued(job_id)
        m.history.append((JobStatus.RUNNING, target))
        m.status = target
        m.cancel_requested = None
        assert after.status is target
        self._count(f"recover -> {target}")

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        ids = sorted({s.id for s in self.claimed[worker]})
        owned = self.portal.call(
            lambda: self.store.renew_leases(ids, worker_id=worker, expires_ns=self.clock() + int(LEASE_S * 1e9))
        )
        expected = {j for j in ids if self.model[j].status is JobStatus.RUNNING and self.model[j].owner == worker}
        assert owned == expected
        self._count("heartbeat")

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        stored = {j.id: j for j in self.portal.call(lambda: self.store.list_jobs(limit=10_000))}
        assert set(stored) == set(self.model)
        for job_id, m in self.model.items():
            job = stored[job_id]
            assert (job.status, job.attempt, job.lease_owner, job.cancel_requested) == (
                m.status,
                m.attempt,
                m.owner,
                m.cancel_requested,
            ), f"{job_id}: store {job.status}/{job.attempt}/{job.lease_owner}/{job.cancel_requested}, model {m}"
            if job.status is JobStatus.RUNNING:
                assert job.lease_owner, f"{job_id} running without a lease owner"
                assert job.lease_expires_ns, f"{job_id} running without a lease expiry"
            else:
                assert job.lease_owner is None
            assert job.attempt >= self.attempts_seen.get(job_id, 1), "attempt went down"
            self.attempts_seen[job_id] = job.attempt

    @invariant()
    def histories_are_legal_paths_and_terminals_are_final(self) -> None:
        for job_id, m in self.model.items():
            history = self.portal.call(self.store.history, job_id)
            assert [(e.status_from, e.status_to) for e in history] == m.history
            # The status path, without the requests recorded beside it (running -> running).
            pairs = [(e.status_from, e.status_to) for e in history if e.is_transition]
            assert pairs[0] == (None, JobStatus.PENDING)
            for (_, previous), (current_from, current_to) in itertools.pairwise(pairs):
                assert current_from is previous
                assert current_from is not None
                assert is_legal(current_from, current_to)
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            assert sum(1 for _, to in pairs if to.terminal) == (1 if m.status.terminal else 0)
            if job_id in self.finished:
                assert self.finished[job_id] == (str(m.status), m.attempt, len(pairs)), "a terminal job changed"
            elif m.status.terminal:
                self.finished[job_id] = (str(m.status), m.attempt, len(pairs))


STATS: dict[str, int] = {}


@pytest.mark.timeout(1200)
def test_store_and_workflow_follow_the_model(soak: bool) -> None:
    from faults.helpers import figures

    STATS.clear()
    machine = JobStoreMachine
    run = machine.TestCase
    run.settings = settings(
        max_examples=200 if soak else 25,
        stateful_step_count=50 if soak else 30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
    )
    run().runTest()
    figures("model-based test (hypothesis state machine, real SQLite store)", dict(sorted(STATS.items())))
    assert STATS.get("stale finish fenced off", 0) > 0
    assert any(k.startswith("recover") for k in STATS)
