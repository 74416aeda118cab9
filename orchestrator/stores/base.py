"""The ``JobStore`` port: what the workflow, the use cases and the queue need of storage.

Implementations: :mod:`orchestrator.stores.sqlite` (embedded default) and
:mod:`orchestrator.stores.postgres` (many workers on many hosts). Every status change
goes through :meth:`JobStore.apply` or :meth:`JobStore.claim`, which compare-and-set
the status and the attempt and append the lifecycle-history row in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.domain import Job, JobStatus, LifecycleEntry, Transition

__all__ = ["JobStore"]


class JobStore(Protocol):
    #: "sqlite" or "postgresql", for logs and the README's tables.
    backend: str

    #: The schema version after :meth:`open` (the highest migration applied).
    schema_version: int

    async def open(self, *, migrate: bool = True) -> None:
        """Connect and apply pending schema migrations; with ``migrate=False`` raise
        :class:`PersistenceError` when the schema is not current instead."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`PersistenceError` when the store cannot be reached."""

    async def insert(self, job: Job) -> None:
        """Persist a new Pending job with its creation history row."""

    async def insert_enqueued(self, job: Job, transition: Transition) -> Job:
        """Persist a new Pending job and apply its Pending -> Queued ``transition``
        atomically (one statement on PostgreSQL, one transaction on SQLite): the job, its
        creation history row, then the transition's history row, webhook outbox rows and
        wake-up, exactly as :meth:`insert` followed by :meth:`apply` would. Returns the
        job Queued."""

    async def get(self, job_id: str) -> Job:
        """The job, or :class:`JobNotFound`."""

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        project_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Job]:
        """Jobs newest first; ``after`` is the id of the last job of the previous page."""

    async def apply(self, transition: Transition) -> Job:
        """Apply one transition atomically: compare-and-set on (status, attempt), update
        the job, append the history row. Raises :class:`TransitionConflict` when the
        job is no longer in ``status_from`` at ``attempt`` and :class:`JobNotFound`."""

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        """:meth:`apply`, also returning the job's lifecycle history as it stands after
        the transition (in the same round trip), as :meth:`history` would."""

    async def claim(self, *, worker_id: str, lease_ns: int, now_ns: int) -> Job | None:
        """Move the oldest Queued job to Running, leased to ``worker_id``, or None."""

    async def renew_leases(self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int) -> set[str]:
        """Extend the leases ``worker_id`` still holds; returns the ids it still owns."""

    async def request_cancel(self, job_id: str, reason: str) -> Job:
        """Flag a Running job for cancellation by the worker that runs it."""

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The cancellation reasons requested for these jobs, by id."""

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        """Running jobs whose lease has expired."""

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        """The job's lifecycle history, oldest first."""

    async def queue_depth(self) -> int: ...

    async def wait_for_work(self, *, max_wait: float) -> None:
        """Return when a job may be claimable, or after ``max_wait`` seconds."""
