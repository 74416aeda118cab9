"""The job store, written once over a :class:`~orchestrator.stores.connector.Connector`.

Everything a store does beyond running a named query lives here: the migration runner,
turning a lost compare-and-set into the right typed error, reading rows back into
domain objects, retention. The SQL is in ``queries/*.sql`` and the lifecycle rules
(legal transitions, history rows, webhook outbox) in the schema's triggers, the same
on both databases. Each operation is one named query (or one batch), so on PostgreSQL it
stays one round trip.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from orchestrator.domain import (
    CancelPending,
    ErrorCategory,
    IllegalTransition,
    Job,
    JobNotFound,
    JobStatus,
    LifecycleEntry,
    Transition,
    TransitionConflict,
)
from orchestrator.domain.values import canonical_reason, canonical_text
from orchestrator.stores import rows, sql
from orchestrator.stores.connector import Connector, Params, Row, TransitionRefused

__all__ = ["SQLJobStore"]

log = logging.getLogger("orchestrator.stores")

_BACKENDS = {"sqlite": "sqlite", "postgres": "postgresql"}


class SQLJobStore:
    """The :class:`~orchestrator.stores.base.JobStore` over one connector."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.backend = _BACKENDS[connector.dialect]
        self.schema_version = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.connector.target!r})"

    # -- connection -------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        await self.connector.open()
        try:
            await self._migrate(apply=migrate)
        except BaseException:
            await self.connector.close()
            raise

    async def _migrate(self, *, apply: bool) -> None:
        async with self.connector.transaction() as tx:
            await tx.execute("migration_lock")
            await tx.execute("create_migrations_table")
            applied = {int(r["version"]) for r in await tx.fetchall("applied_migrations")}
            pending = [m for m in sql.migrations(self.connector.dialect) if m.version not in applied]
            if pending and not apply:
                raise sql.SchemaOutdated(self.connector.target, [f"{m.version:04d}_{m.name}" for m in pending])
            for migration in pending:
                await tx.execute_script(migration.sql)
                await tx.execute(
                    "record_migration",
                    {"version": migration.version, "name": migration.name, "applied_ns": time.time_ns()},
                )
                log.info("applied migration %04d_%s", migration.version, migration.name)
        self.schema_version = max([*applied, *(m.version for m in pending)], default=0)

    async def close(self) -> None:
        await self.connector.close()

    async def ping(self) -> None:
        await self.connector.fetchone("ping")

    # -- writes -----------------------------------------------------------------------

    async def insert(self, job: Job) -> Job:
        try:
            row = await self.connector.fetchone("insert_job", rows.job_params(job))
        except TransitionRefused as refused:
            raise IllegalTransition(job.id, JobStatus.PENDING, job.status, project_id=job.project_id) from refused
        assert row is not None  # an INSERT ... RETURNING that did not raise returned its row
        stored = rows.job_from_row(row)
        if stored.status is JobStatus.QUEUED:
            self.connector.wake_local()
        return stored

    async def apply(self, transition: Transition) -> Job:
        job, _ = await self._apply(transition, with_history=False)
        return job

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        return await self._apply(transition, with_history=True)

    async def _apply(self, t: Transition, *, with_history: bool) -> tuple[Job, list[LifecycleEntry]]:
        calls: list[tuple[str, Params]] = [("apply_transition", rows.transition_params(t))]
        if with_history:
            calls.append(("history", {"job_id": t.job_id}))
        try:
            results = await self.connector.batch(calls)
        except TransitionRefused as refused:
            raise IllegalTransition(t.job_id, t.status_from, t.status_to) from refused
        if not results[0]:
            raise await self._conflict(t)
        job = rows.job_from_row(results[0][0])
        if job.status is JobStatus.QUEUED:
            self.connector.wake_local()
        history = [rows.entry_from_row(r) for r in results[1]] if with_history else []
        return job, history

    async def _conflict(self, t: Transition) -> Exception:
        """Why a compare-and-set matched nothing, as a typed error."""
        current = await self.connector.fetchone("get_job", {"id": t.job_id})
        if current is None:
            return JobNotFound(t.job_id)
        status = JobStatus(current["status"])
        if (
            status is JobStatus.RUNNING
            and t.status_from is JobStatus.RUNNING
            and current["attempt"] == t.attempt
            and current["cancel_requested"] is not None
        ):
            return CancelPending(t.job_id, t.status_to, current["cancel_requested"], project_id=current["project_id"])
        return TransitionConflict(t.job_id, t.status_from, status, t.status_to, project_id=current["project_id"])

    async def claim(self, *, worker_id: str, lease_ns: int, now_ns: int) -> Job | None:
        claimed = await self.claim_batch(worker_id=worker_id, lease_ns=lease_ns, now_ns=now_ns, limit=1)
        return claimed[0] if claimed else None

    async def claim_batch(self, *, worker_id: str, lease_ns: int, now_ns: int, limit: int) -> list[Job]:
        params = {"worker_id": worker_id, "now_ns": now_ns, "expires_ns": now_ns + lease_ns, "limit": limit}
        found = [rows.job_from_row(r) for r in await self.connector.fetchall("claim", params)]
        return sorted(found, key=lambda j: (j.queued_ns or 0, j.id))

    async def renew_leases(self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int) -> set[str]:
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "worker_id": worker_id, "expires_ns": expires_ns}
        return {r["id"] for r in await self.connector.fetchall("renew_leases", params)}

    async def request_cancel(self, job_id: str, reason: str, *, requested_by: str, at_ns: int) -> Job:
        params = {
            "id": job_id,
            "reason": canonical_reason(reason),
            "requested_by": canonical_text(requested_by),
            "at_ns": at_ns,
        }
        row = await self.connector.fetchone("request_cancel", params) or await self._row(job_id)
        return rows.job_from_row(row)

    async def prune(self, *, before_ns: int, limit: int = 500) -> list[str]:
        found = await self.connector.fetchall("prunable_jobs", {"before_ns": before_ns, "limit": limit})
        return await self.delete_jobs([r["id"] for r in found])

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        ids = {"ids": list(job_ids)}
        # Deliveries name their job but do not cascade from it: deleted first, in the same
        # transaction, for the terminal jobs among these (the others are not deleted).
        _, deleted = await self.connector.batch([("delete_deliveries", ids), ("delete_jobs", ids)])
        return [r["id"] for r in deleted]

    # -- reads ------------------------------------------------------------------------

    async def _row(self, job_id: str) -> Row:
        row = await self.connector.fetchone("get_job", {"id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return row

    async def get(self, job_id: str) -> Job:
        return rows.job_from_row(await self._row(job_id))

    async def find_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        params = {"prefix": prefix, "prefix_end": prefix + "~", "limit": limit}
        return [r["id"] for r in await self.connector.fetchall("find_ids", params)]

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
        params = {
            "status": status and str(status),
            "project_id": project_id,
            "error_category": error_category and str(error_category),
            "since_ns": since_ns,
            "after": after,
            "limit": limit,
        }
        return [rows.job_from_row(r) for r in await self.connector.fetchall("list_jobs", params)]

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        found = await self.connector.fetchall("cancel_requests", {"ids": list(job_ids)})
        return {r["id"]: r["cancel_requested"] for r in found}

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        found = await self.connector.fetchall("expired", {"now_ns": now_ns, "limit": limit})
        return [rows.job_from_row(r) for r in found]

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        return [rows.entry_from_row(r) for r in await self.connector.fetchall("history", {"job_id": job_id})]

    async def history_many(self, job_ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        histories: dict[str, list[LifecycleEntry]] = defaultdict(list)
        if job_ids:
            for row in await self.connector.fetchall("history_many", {"ids": list(job_ids)}):
                histories[row["job_id"]].append(rows.entry_from_row(row))
        return dict(histories)

    async def queue_depth(self) -> int:
        row = await self.connector.fetchone("queue_depth")
        assert row is not None
        return int(row["depth"])

    # -- wake-ups ---------------------------------------------------------------------

    async def wait_for_work(self, *, max_wait: float) -> None:
        await self.connector.wait_for_notification(max_wait=max_wait)
