"""``JobWorkflow``: the one place where a job's status changes.

It validates each change against the transition table, has the store apply it as a
compare-and-set with its lifecycle-history row in the same transaction, and reports
it to telemetry (log record, root-span event, metrics) from that single point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio

from orchestrator.domain import (
    CancelPending,
    ErrorCategory,
    IllegalTransition,
    Job,
    JobStatus,
    ModuleResult,
    Phase,
    Transition,
    TransitionConflict,
    is_legal,
    now_ns,
)
from orchestrator.stores import JobStore
from orchestrator.telemetry import JobTelemetry
from otel.instrument import instrument
from otel.vocabulary import Attr

__all__ = ["JobWorkflow"]

log = logging.getLogger(__name__)


def _job_fields(self: object, job: Job, target: JobStatus | None = None, **_: Any) -> dict[str, Any]:
    return {Attr.JOB_ID: job.id, Attr.PROJECT_ID: job.project_id, Attr.STATUS_TO: target and str(target)}


class JobWorkflow:
    def __init__(
        self,
        store: JobStore,
        telemetry: JobTelemetry,
        *,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self._clock = clock

    @instrument("workflow.create", fields=_job_fields, level=logging.DEBUG)
    async def create(self, job: Job, *, enqueue: bool = False) -> Job:
        """Persist a new Pending job (and its creation history row).

        With ``enqueue``, the job is stored already moved Pending -> Queued (reason
        ``enqueued``) in the same write (one statement): the history, the records, the
        metrics and the outbox are those of :meth:`create` followed by :meth:`transition`,
        with one round trip instead of two and nothing written at all if the write fails.
        """
        if job.status is not JobStatus.PENDING:
            raise IllegalTransition(job.id, job.status, JobStatus.PENDING, project_id=job.project_id)
        if not enqueue:
            stored = await self.store.insert(job)
            self.telemetry.created(stored)
            return stored
        enqueued = self._transition(job, JobStatus.QUEUED, reason="enqueued")
        queued = await self.store.insert(_entered(job, enqueued))
        self.telemetry.created(job)
        self.telemetry.transitioned(job, queued, enqueued)
        return queued

    @instrument("workflow.create_started", fields=_job_fields, level=logging.DEBUG)
    async def create_started(self, job: Job, *, worker_id: str, lease_seconds: float) -> Job:
        """Persist a new job already claimed by ``worker_id`` (Pending -> Queued ->
        Running, leased), in one write: no other worker can claim it in between, since it
        is never visible as Queued. ``orchestrator run`` runs its own job this way."""
        if job.status is not JobStatus.PENDING:
            raise IllegalTransition(job.id, job.status, JobStatus.PENDING, project_id=job.project_id)
        enqueued = self._transition(job, JobStatus.QUEUED, reason="enqueued")
        queued = _entered(job, enqueued)
        started = self._transition(
            queued, JobStatus.RUNNING, reason="claimed", worker_id=worker_id, lease_seconds=lease_seconds
        )
        running = await self.store.insert(_entered(queued, started))
        self.telemetry.created(job)
        self.telemetry.transitioned(job, queued, enqueued)
        self.telemetry.transitioned(queued, running, started)
        return running

    @instrument("workflow.transition", fields=_job_fields, level=logging.DEBUG)
    async def transition(
        self,
        job: Job,
        target: JobStatus,
        *,
        reason: str,
        error_category: ErrorCategory | None = None,
        error_phase: Phase | None = None,
        results: tuple[ModuleResult, ...] | None = None,
        worker_id: str | None = None,
        lease_seconds: float | None = None,
    ) -> Job:
        """Move ``job`` from its current status to ``target``.

        Raises :class:`IllegalTransition` when the table forbids it and
        :class:`TransitionConflict` when another process changed the job first.
        """
        if not is_legal(job.status, target):
            error = IllegalTransition(job.id, job.status, target, project_id=job.project_id)
            self.telemetry.transition_refused(job, target, error)
            raise error
        transition = self._transition(
            job,
            target,
            reason=reason,
            error_category=error_category,
            error_phase=error_phase,
            results=results,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
        )
        # Shielded: once the store has applied the transition it stands, so a cancellation
        # arriving meanwhile (a worker shutting down its reaper) must not lose its
        # telemetry, such as the root span emitted at the terminal transition.
        # A sampled job's root span is emitted at its terminal transition, from the
        # persisted history: read in the same round trip as the transition.
        root_span = target.terminal and job.trace.sampled
        with anyio.CancelScope(shield=True):
            try:
                if root_span:
                    updated, history = await self.store.apply_with_history(transition)
                else:
                    updated, history = await self.store.apply(transition), []
            except CancelPending as pending:
                # Its cancellation was asked while it ran: a cancel answered "flagged"
                # means Cancelled, whatever the job was about to become. What it computed
                # is kept.
                self.telemetry.transition_refused(job, target, pending)
                return await self.transition(
                    job,
                    JobStatus.CANCELLED,
                    reason=pending.reason,
                    error_category=ErrorCategory.CANCELLED,
                    error_phase=Phase.EXECUTE,
                    results=results,
                    worker_id=worker_id,
                )
            except TransitionConflict as conflict:
                self.telemetry.transition_refused(job, target, conflict)
                raise
            self.telemetry.transitioned(job, updated, transition)
            if root_span:
                self.telemetry.finished(updated, history)
        return updated

    def _transition(
        self,
        job: Job,
        target: JobStatus,
        *,
        reason: str,
        error_category: ErrorCategory | None = None,
        error_phase: Phase | None = None,
        results: tuple[ModuleResult, ...] | None = None,
        worker_id: str | None = None,
        lease_seconds: float | None = None,
    ) -> Transition:
        """The transition of ``job`` to ``target`` now, as the store applies it."""
        at = self._clock()
        recovering = job.status is JobStatus.RUNNING and target is JobStatus.QUEUED
        return Transition(
            job_id=job.id,
            status_from=job.status,
            status_to=target,
            reason=reason,
            at_ns=at,
            duration_ms=max(0.0, (at - job.status_ns) / 1e6),
            attempt=job.attempt,
            new_attempt=job.attempt + 1 if recovering else job.attempt,
            worker_id=worker_id,
            error_category=error_category,
            error_phase=error_phase,
            results=results,
            lease_owner=worker_id if lease_seconds else None,
            lease_expires_ns=at + int(lease_seconds * 1e9) if lease_seconds else None,
        )

    async def claim(self, worker_id: str, *, lease_seconds: float) -> Job | None:
        """Claim the oldest Queued job for ``worker_id`` (Queued -> Running, leased)."""
        claimed = await self.claim_batch(worker_id, lease_seconds=lease_seconds, limit=1)
        return claimed[0] if claimed else None

    @instrument("workflow.claim", fields=lambda self, worker_id, **_: {Attr.WORKER_ID: worker_id}, level=logging.DEBUG)
    async def claim_batch(self, worker_id: str, *, lease_seconds: float, limit: int) -> list[Job]:
        """Claim up to ``limit`` of the oldest Queued jobs for ``worker_id`` (Queued ->
        Running, leased), in one statement."""
        at = self._clock()
        lease_ns = int(lease_seconds * 1e9)
        claimed = await self.store.claim_batch(worker_id=worker_id, lease_ns=lease_ns, now_ns=at, limit=limit)
        for job in claimed:
            queued = Transition(
                job_id=job.id,
                status_from=JobStatus.QUEUED,
                status_to=JobStatus.RUNNING,
                reason="claimed",
                at_ns=job.status_ns,
                duration_ms=max(0.0, (job.status_ns - (job.queued_ns or job.status_ns)) / 1e6),
                attempt=job.attempt,
                new_attempt=job.attempt,
                worker_id=worker_id,
            )
            self.telemetry.transitioned(_as_queued(job), job, queued)
        return claimed

    async def start(self, job: Job, *, worker_id: str, lease_seconds: float) -> Job:
        """Start one given Queued job on ``worker_id`` (Queued -> Running, leased)."""
        return await self.transition(
            job, JobStatus.RUNNING, reason="claimed", worker_id=worker_id, lease_seconds=lease_seconds
        )

    @instrument("workflow.recover", fields=_job_fields, level=logging.DEBUG)
    async def recover(self, job: Job, *, max_attempts: int, worker_id: str | None = None) -> Job:
        """A Running job whose lease expired: its worker is gone. Close the lost attempt
        in the trace, then requeue it (attempt + 1), or fail it with ``worker_lost``
        once it has used ``max_attempts``, or cancel it if a cancel was requested."""
        self.telemetry.lost_attempt(job, reason="lease_expired", end_ns=self._clock())
        if job.cancel_requested:
            return await self.transition(
                job,
                JobStatus.CANCELLED,
                reason=job.cancel_requested,
                error_category=ErrorCategory.CANCELLED,
                error_phase=Phase.EXECUTE,
                worker_id=worker_id,
            )
        if job.attempt >= max_attempts:
            return await self.transition(
                job,
                JobStatus.FAILED,
                reason=f"worker_lost: lease expired on attempt {job.attempt} of {max_attempts}",
                error_category=ErrorCategory.QUEUE,
                error_phase=Phase.EXECUTE,
                worker_id=worker_id,
            )
        return await self.transition(job, JobStatus.QUEUED, reason="lease_expired", worker_id=worker_id)

    @instrument(
        "workflow.cancel",
        fields=lambda self, job_id, **_: {Attr.JOB_ID: job_id},
        level=logging.DEBUG,
    )
    async def cancel(self, job_id: str, *, reason: str = "cancelled by user", requested_by: str | None = None) -> Job:
        """Cancel a job: at once when Pending or Queued; a Running job is flagged (the
        request is recorded in its history) and its worker cancels its modules and ends
        it Cancelled within a bounded time. A flagged job can only end Cancelled."""
        for _ in range(3):
            job = await self.store.get(job_id)
            if job.status is JobStatus.RUNNING:
                at = self._clock()
                flagged = await self.store.request_cancel(
                    job_id, reason, requested_by=requested_by or "unknown", at_ns=at
                )
                if flagged.status is JobStatus.RUNNING:
                    if flagged.cancel_requested_ns == at:  # this request flagged it (not an earlier one)
                        self.telemetry.cancel_requested(flagged, reason=reason, requested_by=requested_by or "unknown")
                    return flagged
                continue  # it finished meanwhile: read again
            if job.status.terminal:
                break
            try:
                return await self.transition(
                    job,
                    JobStatus.CANCELLED,
                    reason=reason,
                    error_category=ErrorCategory.CANCELLED,
                    error_phase=_phase_of(job.status),
                    worker_id=requested_by,
                )
            except TransitionConflict:
                continue  # claimed or finished meanwhile: read again
        job = await self.store.get(job_id)
        raise IllegalTransition(job.id, job.status, JobStatus.CANCELLED, project_id=job.project_id)


def _phase_of(status: JobStatus) -> Phase:
    return {JobStatus.PENDING: Phase.CREATE, JobStatus.QUEUED: Phase.QUEUED}.get(status, Phase.EXECUTE)


def _entered(job: Job, t: Transition) -> Job:
    """``job`` as it stands after ``t`` (for a job written in the status it has reached)."""
    return replace(
        job,
        status=t.status_to,
        status_ns=t.at_ns,
        attempt=t.new_attempt,
        reason=t.reason,
        worker_id=t.worker_id,
        queued_ns=t.at_ns if t.status_to is JobStatus.QUEUED else job.queued_ns,
        started_ns=t.at_ns if t.status_to is JobStatus.RUNNING else job.started_ns,
        lease_owner=t.lease_owner,
        lease_expires_ns=t.lease_expires_ns,
    )


def _as_queued(job: Job) -> Job:
    """The job as it was just before the claim (for telemetry of the claim)."""
    return replace(job, status=JobStatus.QUEUED, status_ns=job.queued_ns or job.status_ns)
