"""The ``JobStore`` port: what the workflow, the use cases and the queue need of storage.

One implementation, :class:`orchestrator.stores.core.SQLJobStore`, over a connector per
database (:mod:`orchestrator.stores.sqlite`, the embedded default, and
:mod:`orchestrator.stores.postgres`, for many workers on many hosts). Every status
change goes through :meth:`JobStore.apply` or :meth:`JobStore.claim`, which
compare-and-set the status and the attempt; the database appends the lifecycle-history
row and the webhook outbox rows in the same statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.domain import ErrorCategory, Job, JobStatus, LifecycleEntry, Transition

__all__ = ["JobStore", "RootStamps"]


class RootStamps(Protocol):
    """The emitter of root spans in this process (see :mod:`orchestrator.tracing.ledger`):
    the terminal transition of a sampled job records ``emitter_id`` and a number from
    :meth:`begin` in its own UPDATE, and the emitter learns how the write went."""

    emitter_id: str

    def begin(self, job_id: str) -> int:
        """A new number for the root span of ``job_id``, about to be written."""

    def committed(self, seq: int, trace_id: str, root_span_id: str) -> None:
        """The transition carrying ``seq`` is stored: its root span follows."""

    def void(self, seq: int) -> None:
        """The transition carrying ``seq`` was refused: nothing was stored."""

    def unknown(self, seq: int) -> None:
        """The write failed in a way that may or may not have stored it."""


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

    async def insert(self, job: Job) -> Job:
        """Persist a new job in its status (Pending, Queued, or Running for a job its
        creator runs itself) with the history of that path, atomically; returns it as
        stored. Raises :class:`IllegalTransition` for any other status."""

    async def get(self, job_id: str) -> Job:
        """The job, or :class:`JobNotFound`."""

    async def find_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids starting with ``prefix`` (hexadecimal digits and dashes), in order."""

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        project_id: str | None = None,
        error_category: ErrorCategory | None = None,
        since_ns: int | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Job]:
        """Jobs newest first; ``after`` is the id of the last job of the previous page;
        ``since_ns`` keeps jobs created at or after it. A job's id must begin with its
        creation time, as :meth:`Job.new` makes it (``since_ns`` starts at that moment's
        first id: a job whose id is older than its ``created_ns`` would not be listed)."""

    async def apply(self, transition: Transition) -> Job:
        """Apply one transition atomically: compare-and-set on (status, attempt), update
        the job, append the history row. Raises :class:`TransitionConflict` when the
        job is no longer in ``status_from`` at ``attempt`` (:class:`CancelPending` when
        its cancellation was asked and only Cancelled is allowed), :class:`JobNotFound`,
        and :class:`IllegalTransition` when the database's transition table refuses it."""

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        """:meth:`apply`, also returning the job's lifecycle history as it stands after
        the transition (in the same round trip), as :meth:`history` would."""

    async def claim(self, *, worker_id: str, lease_ns: int, now_ns: int) -> Job | None:
        """Move the oldest Queued job to Running, leased to ``worker_id``, or None."""

    async def claim_batch(self, *, worker_id: str, lease_ns: int, now_ns: int, limit: int) -> list[Job]:
        """Move up to ``limit`` of the oldest Queued jobs to Running, leased to
        ``worker_id``, in one statement; oldest first."""

    async def renew_leases(
        self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int, now_ns: int | None = None
    ) -> set[str]:
        """Extend the leases ``worker_id`` still holds; returns the ids it still owns. A job
        whose row another session holds locked is not renewed; it counts as owned while its
        lease has not expired by ``now_ns`` (the worker's clock; default: now)."""

    async def request_cancel(self, job_id: str, reason: str, *, requested_by: str, at_ns: int) -> Job:
        """Flag a Running job for cancellation by the worker that runs it (recorded in
        its history, once); returns the job as it stands."""

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The cancellation reasons requested for these jobs, by id."""

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        """Running jobs whose lease has expired."""

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        """The job's lifecycle history, oldest first."""

    async def history_many(self, job_ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        """The lifecycle histories of several jobs (one query), by id."""

    async def queue_depth(self) -> int: ...

    async def prune(self, *, before_ns: int, limit: int = 500) -> list[str]:
        """Delete up to ``limit`` terminal jobs that finished before ``before_ns``, with
        their history and webhook deliveries; returns their ids."""

    async def count_prunable(self, *, before_ns: int) -> int:
        """How many terminal jobs finished before ``before_ns`` (what :meth:`prune` would delete)."""

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Delete these jobs if terminal, with their history and deliveries; returns the
        ids deleted."""

    # -- durable traces (orchestrator.tracing) -----------------------------------------

    #: Set by the application when its telemetry confirms exports (else None).
    root_stamps: RootStamps | None

    async def trace_claim(
        self, *, owner: str, now_ns: int, before_ns: int, expires_ns: int, limit: int = 50
    ) -> list[tuple[Job, str]]:
        """Claim, for ``owner`` until ``expires_ns``, up to ``limit`` terminal jobs that
        finished before ``before_ns`` and whose trace must be rebuilt (flagged lost, or
        above the watermark of an emitter whose watermark has not moved since
        ``before_ns``), with why (``not_emitted``, ``export_failed``, ``unconfirmed``).
        A job another reconciler holds is not claimed."""

    async def trace_confirm(
        self,
        *,
        emitter: str,
        confirmed_seq: int | None,
        lost: Sequence[str] = (),
        done: Sequence[str] = (),
        now_ns: int,
    ) -> None:
        """In one transaction: flag the ``lost`` jobs' traces for rebuilding, record the
        ``done`` jobs' rebuilt traces as delivered, and move ``emitter``'s watermark up
        to ``confirmed_seq`` (None: leave it)."""

    async def trace_prune_emitters(self, *, before_ns: int) -> None:
        """Forget emitters silent since ``before_ns`` that have nothing left to rebuild."""

    async def wait_for_work(self, *, max_wait: float) -> None:
        """Return when a job may be claimable, or after ``max_wait`` seconds."""
