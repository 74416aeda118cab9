"""The job store, written once over a :class:`~orchestrator.stores.connector.Connector`.

Everything a store does beyond running a named query lives here: the migration runner,
turning a lost compare-and-set into the right typed error, reading rows back into
domain objects, retention. The SQL is in ``queries/*.sql`` and the lifecycle rules
(legal transitions, history rows, webhook outbox) in the schema's triggers, the same
on both databases. Each operation is one named query (or one batch), so on PostgreSQL it
stays one round trip. Terminal transitions that arrive while one is being written are
written together, in one statement (``apply_transitions``, see
:mod:`orchestrator.stores.grouping`), each row with its own compare-and-set.

A worker's transitions and lease renewals have a deadline when the store is given one
(``write_seconds``, PostgreSQL's: past it the statement is cancelled in the server; a
lock wait ends sooner, at the connection's lock timeout; SQLite's waits are bounded by
its busy timeout). A row locked for good by another session costs its job the attempt
(a typed, transient :class:`~orchestrator.domain.PersistenceError`; the lease then
expires and the job runs again), never the worker its slot. An error the database
answered (``PersistenceError.answered``) means nothing was written; no answer means it
may have been, and a job found in the state its write would have left counts as written.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import anyio

from orchestrator.domain import (
    CancelPending,
    ErrorCategory,
    IllegalTransition,
    Job,
    JobNotFound,
    JobStatus,
    LifecycleEntry,
    PersistenceError,
    Transition,
    TransitionConflict,
)
from orchestrator.domain.job import first_id_at
from orchestrator.domain.values import MAX_STORED_INT, canonical_reason, canonical_text, storable
from orchestrator.stores import rows, sql
from orchestrator.stores.base import RootStamps
from orchestrator.stores.connector import Connector, Params, Row, TransitionRefused
from orchestrator.stores.grouping import GroupedWrites

__all__ = ["SQLJobStore"]

log = logging.getLogger("orchestrator.stores")

#: A transition's outcome: the job as stored, and its history when it was asked for.
_Applied = tuple[Job, list[LifecycleEntry]]

_BACKENDS = {"sqlite": "sqlite", "postgres": "postgresql"}

#: A trace claim picks among this many times its limit of due jobs (see trace_claim).
_TRACE_CLAIM_CANDIDATES: Final = 4

#: Seconds a group of new jobs may take to be written before each is inserted alone.
INSERT_GROUP_SECONDS: Final = 10.0


class SQLJobStore:
    """The :class:`~orchestrator.stores.base.JobStore` over one connector."""

    def __init__(self, connector: Connector, *, write_seconds: float | None = None) -> None:
        self.connector = connector
        self.backend = _BACKENDS[connector.dialect]
        #: The deadline of a worker's own writes (None: the connector's own bounds).
        self.write_seconds = write_seconds
        self.schema_version = 0
        #: Who emits the root spans of the sampled jobs this store ends (durable traces).
        self.root_stamps: RootStamps | None = None
        #: This process's terminal transitions, written in groups (see _apply).
        self._terminal_writes: GroupedWrites[tuple[Transition, bool], _Applied] = GroupedWrites(
            self._apply_group, key=lambda item: item[0].job_id
        )
        #: This process's new jobs, inserted in groups (see insert).
        # A job inserted alone stays cancellable, as without grouping (a group is shielded).
        self._inserts: GroupedWrites[Job, Job] = GroupedWrites(
            self._insert_group, key=lambda job: job.id, shield_alone=False
        )

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
        # New jobs arriving while one is being inserted go together in the next write (one
        # statement, one round trip), each row with its own triggers and outcome.
        try:
            stored = await self._inserts.submit(job)
        except _InsertAlone as alone:
            # Its group's write failed: inserted alone, here in its caller's task (which a
            # cancellation or a deadline can stop), not by the group's leader for all.
            stored = await self._insert_one(job, after_group=alone.maybe_stored)
        if stored.status is JobStatus.QUEUED:
            self.connector.wake_local()
        return stored

    async def _insert_one(self, job: Job, *, after_group: bool = False) -> Job:
        """One new job, alone. ``after_group``: it was in a group whose write failed
        without saying whether it was stored; finding it stored is then a success."""
        if after_group:
            current = await self.connector.fetchone("get_job", {"id": job.id})
            if current is not None and _is_stored(current, job):
                return rows.job_from_row(current)
        try:
            row = await self.connector.fetchone("insert_job", rows.job_params(job))
        except TransitionRefused as refused:
            raise IllegalTransition(job.id, JobStatus.PENDING, job.status, project_id=job.project_id) from refused
        assert row is not None  # an INSERT ... RETURNING that did not raise returned its row
        return rows.job_from_row(row)

    async def _insert_group(self, jobs: Sequence[Job]) -> list[Job | BaseException]:
        """Several new jobs in one statement, ``insert_jobs``. When the write fails, each
        caller inserts its job alone (:class:`_InsertAlone`): a job the database refuses
        fails only its own caller. The group's statement is shielded from its callers'
        cancellation, so it gets a deadline of its own (a table lock held for good)."""
        if len(jobs) > 1:
            try:
                with anyio.fail_after(INSERT_GROUP_SECONDS):
                    written = await self.connector.fetchall(
                        "insert_jobs", {"jobs": rows.json_text_of([rows.job_params(job) for job in jobs])}
                    )
            except Exception as exc:  # noqa: BLE001 - each alone, by its caller
                # The database answered with an error (a refusal, a constraint, a value it
                # rejects): the statement was rolled back, nothing of it is stored, and a
                # job found stored would be an earlier insert of the same job (a duplicate).
                # No answer (the connection lost, the deadline): it may have been stored.
                return [_InsertAlone(maybe_stored=not _answered(exc)) for _ in jobs]
            by_id = {row["id"]: row for row in written}
            return [
                rows.job_from_row(by_id[job.id])
                if job.id in by_id
                else PersistenceError("the insert returned no row for this job", job_id=job.id)
                for job in jobs
            ]
        return [await self._insert_one(jobs[0])]  # its error, if any, is its caller's (GroupedWrites)

    async def apply(self, transition: Transition) -> Job:
        job, _ = await self._apply(transition, with_history=False)
        return job

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        return await self._apply(transition, with_history=True)

    async def _apply(self, t: Transition, *, with_history: bool) -> tuple[Job, list[LifecycleEntry]]:
        # Terminal transitions arriving while one is being written go together in the
        # next write (one transaction, one round trip): each keeps its own
        # compare-and-set statement, history row, outbox rows and outcome.
        if t.status_to.terminal:
            try:
                return await self._terminal_writes.submit((t, with_history))
            except _ApplyAlone as alone:
                # Its group's write failed: applied alone, here in its caller's task, with
                # a deadline of its own (not one after the other by the group's leader). The
                # callers shield terminal writes (workflow.transition): a caller cancelled
                # here would not learn whether its group had written it.
                return await self._apply_one(t, with_history=with_history, after_group=alone.maybe_applied)
        return await self._apply_one(t, with_history=with_history)

    def _stamp(self, t: Transition, with_history: bool) -> _Stamp | None:
        """The terminal transition of a sampled job (the one read back with its history)
        records, in its own UPDATE, the emitter of the job's root span and its number."""
        stamps = self.root_stamps if with_history and t.status_to.terminal else None
        return _Stamp(stamps, stamps.begin(t.job_id)) if stamps is not None else None

    @staticmethod
    def _params(t: Transition, stamp: _Stamp | None, with_history: bool) -> Params:
        return {
            **rows.transition_params(t),
            "trace_emitter": stamp.stamps.emitter_id if stamp is not None else None,
            "trace_seq": stamp.seq if stamp is not None else None,
            "with_history": with_history,
        }

    async def _apply_one(
        self, t: Transition, *, with_history: bool, after_group: bool = False
    ) -> tuple[Job, list[LifecycleEntry]]:
        """One transition, alone, within the write deadline. ``after_group``: it was in a
        group whose write failed without saying whether it was stored; finding it stored
        is then a success."""
        stamp = self._stamp(t, with_history)
        params = self._params(t, stamp, with_history)
        try:
            # One statement, its own transaction, with the history when it is asked for.
            results = [await self.connector.fetchall("apply_transition", params, deadline=self.write_seconds)]
        except TransitionRefused as refused:
            _void(stamp)
            raise IllegalTransition(t.job_id, t.status_from, t.status_to) from refused
        except BaseException as exc:
            if stamp is not None:
                # The database's own answer (a lock timeout, a cancellation past the
                # deadline): rolled back. No answer: committed or not, the emitter cannot tell.
                (stamp.stamps.void if _answered(exc) else stamp.stamps.unknown)(stamp.seq)
            raise
        if not results[0]:
            _void(stamp)
            current = await self.connector.fetchone("get_job", {"id": t.job_id})
            if after_group and current is not None and _shows(current, t):
                return rows.job_from_row(current), await self.history(t.job_id) if with_history else []
            raise self._conflict(t, current)
        row = results[0][0]
        job = rows.job_from_row(row)
        if stamp is not None:
            stamp.stamps.committed(stamp.seq, job.trace.trace_id, job.trace.span_id)
        if job.status is JobStatus.QUEUED:
            self.connector.wake_local()
        return job, rows.history_after(row, job, t) if with_history else []

    async def _apply_group(self, group: Sequence[tuple[Transition, bool]]) -> list[_Applied | BaseException]:
        """Several transitions (of distinct jobs) in one statement, ``apply_transitions``:
        each row its own compare-and-set, as ``apply_transition`` writes it, the rows
        locked in job id order, the histories of the sampled jobs returned with them.
        When the write fails, each caller applies its own alone (:class:`_ApplyAlone`):
        one job's write that the database refuses fails only that job. The group's statement
        has the write deadline too (it is shielded from its callers' cancellation)."""
        if len(group) == 1:
            t, with_history = group[0]
            try:
                return [await self._apply_one(t, with_history=with_history)]
            except Exception as exc:  # noqa: BLE001 - the caller's outcome
                return [exc]
        order = sorted(range(len(group)), key=lambda i: group[i][0].job_id)
        stamps = {i: self._stamp(*group[i]) for i in order}
        params = rows.json_text_of([self._params(group[i][0], stamps[i], group[i][1]) for i in order])
        try:
            written = await self.connector.fetchall(
                "apply_transitions", {"transitions": params}, deadline=self.write_seconds
            )
        except Exception as exc:  # noqa: BLE001 - each alone, by its caller
            answered = _answered(exc)  # rolled back: nothing of it was stored
            for stamp in stamps.values():
                if stamp is not None:
                    (stamp.stamps.void if answered else stamp.stamps.unknown)(stamp.seq)
            return [_ApplyAlone(maybe_applied=not answered) for _ in group]
        by_id = {row["id"]: row for row in written}
        outcomes: dict[int, _Applied | BaseException] = {}
        for i in order:
            t, with_history = group[i]
            row = by_id.get(t.job_id)
            stamp = stamps[i]
            if row is None:
                _void(stamp)
                try:
                    outcomes[i] = self._conflict(t, await self.connector.fetchone("get_job", {"id": t.job_id}))
                except Exception as exc:  # noqa: BLE001 - this job's outcome only
                    outcomes[i] = exc
                continue
            job = rows.job_from_row(row)
            if stamp is not None:
                stamp.stamps.committed(stamp.seq, job.trace.trace_id, job.trace.span_id)
            outcomes[i] = (job, rows.history_after(row, job, t) if with_history else [])
        return [outcomes[i] for i in range(len(group))]

    def _conflict(self, t: Transition, current: Row | None) -> Exception:
        """Why a compare-and-set matched nothing (``current``: the job's row now), as a
        typed error."""
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
        # No deadline: the claim skips locked rows, and a claim whose answer was lost would
        # hold jobs that no one runs until their leases expire.
        found = [rows.job_from_row(r) for r in await self.connector.fetchall("claim", params)]
        return sorted(found, key=lambda j: (j.queued_ns or 0, j.id))

    async def renew_leases(
        self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int, now_ns: int | None = None
    ) -> set[str]:
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "worker_id": worker_id, "expires_ns": expires_ns}
        # Rows another session holds locked are skipped, not waited for (one locked job
        # must not hold back the others' renewals): those still leased to this worker, and
        # not expired (a reaper may be taking an expired one), are still its own, renewed
        # at the next heartbeat.
        renewed = {r["id"] for r in await self.connector.fetchall("renew_leases", params, deadline=self.write_seconds)}
        skipped = [job_id for job_id in job_ids if job_id not in renewed]
        if skipped:
            at = now_ns if now_ns is not None else time.time_ns()
            held = {"ids": skipped, "worker_id": worker_id, "now_ns": at}
            renewed.update(r["id"] for r in await self.connector.fetchall("leases_held", held))
        return renewed

    async def request_cancel(self, job_id: str, reason: str, *, requested_by: str, at_ns: int) -> Job:
        if not storable(job_id):
            raise JobNotFound(job_id)
        params = {
            "id": job_id,
            "reason": canonical_reason(reason),
            "requested_by": canonical_text(requested_by),
            "at_ns": at_ns,
        }
        row = await self.connector.fetchone("request_cancel", params) or await self._row(job_id)
        return rows.job_from_row(row)

    async def prune(self, *, before_ns: int, limit: int = 500) -> list[str]:
        # One transaction: the deliveries of the round's jobs, then the jobs (on PostgreSQL
        # one statement does both, skipping the rows another session holds).
        params = {"before_ns": before_ns, "limit": limit}
        _, deleted = await self.connector.batch([("prune_deliveries", params), ("prune_jobs", params)])
        return [r["id"] for r in deleted]

    async def count_prunable(self, *, before_ns: int) -> int:
        row = await self.connector.fetchone("count_prunable", {"before_ns": before_ns})
        return int(row["jobs"]) if row else 0

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
        if not storable(job_id):  # no stored id holds a NUL or a lone surrogate: it cannot exist
            raise JobNotFound(job_id)
        row = await self.connector.fetchone("get_job", {"id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return row

    async def get(self, job_id: str) -> Job:
        return rows.job_from_row(await self._row(job_id))

    async def find_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        if not storable(prefix):
            return []
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
        if not all(storable(v) for v in (project_id, after) if v is not None):
            return []  # a filter no stored value can match (a NUL, a lone surrogate)
        params = {
            "status": status and str(status),
            "project_id": project_id,
            "error_category": error_category and str(error_category),
            # Every stored time fits a signed 64-bit integer: a later moment (the year 2999)
            # matches no job, an earlier one every job.
            "since_ns": None if since_ns is None else min(max(since_ns, 0), MAX_STORED_INT),
            "since_id": "" if since_ns is None else first_id_at(since_ns),
            "after": after,
            "limit": limit,
        }
        # Led by the most selective filter's index (an optional filter cannot use one).
        if project_id is not None:
            found = await self.connector.fetchall("list_jobs_by_project", params)
        elif error_category is not None:
            found = await self.connector.fetchall("list_jobs_by_error_category", params)
        elif status is not None:
            found = await self.connector.fetchall("list_jobs_by_status", params)
        else:
            found = await self.connector.fetchall("list_jobs", params)
        return [rows.job_from_row(r) for r in found]

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        found = await self.connector.fetchall("cancel_requests", {"ids": list(job_ids)})
        return {r["id"]: r["cancel_requested"] for r in found}

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        found = await self.connector.fetchall("expired", {"now_ns": now_ns, "limit": limit})
        return [rows.job_from_row(r) for r in found]

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        if not storable(job_id):
            return []
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

    # -- durable traces ---------------------------------------------------------------

    async def trace_claim(
        self, *, owner: str, now_ns: int, before_ns: int, expires_ns: int, limit: int = 50
    ) -> list[tuple[Job, str]]:
        params = {
            "owner": owner,
            "now_ns": now_ns,
            "before_ns": before_ns,
            "expires_ns": expires_ns,
            "limit": limit,
            # Rows other sessions hold are skipped among these: room for a few of them.
            "candidates": limit * _TRACE_CLAIM_CANDIDATES,
        }
        claimed = await self.connector.fetchall("trace_claim", params)
        return [(rows.job_from_row(r), _rebuild_reason(r)) for r in sorted(claimed, key=lambda r: r["finished_ns"])]

    async def trace_confirm(
        self,
        *,
        emitter: str,
        confirmed_seq: int | None,
        lost: Sequence[str] = (),
        done: Sequence[str] = (),
        now_ns: int,
    ) -> None:
        # One transaction: a watermark never passes a lost root before its job is flagged.
        calls: list[tuple[str, Params]] = []
        if lost:
            calls.append(("trace_mark_lost", {"ids": list(lost), "now_ns": now_ns}))
        if done:
            calls.append(("trace_mark_done", {"ids": list(done), "now_ns": now_ns}))
        if confirmed_seq is not None:
            calls.append(("trace_watermark", {"emitter": emitter, "confirmed_seq": confirmed_seq, "now_ns": now_ns}))
        if calls:
            await self.connector.batch(calls)

    async def trace_prune_emitters(self, *, before_ns: int) -> None:
        await self.connector.batch([("trace_prune_emitters", {"before_ns": before_ns})])

    # -- wake-ups ---------------------------------------------------------------------

    async def wait_for_work(self, *, max_wait: float) -> None:
        await self.connector.wait_for_notification(max_wait=max_wait)


class _InsertAlone(Exception):
    """The outcome of a new job whose group was not written: its caller inserts it alone
    (``maybe_stored``: the group may have been stored before its answer was lost)."""

    def __init__(self, *, maybe_stored: bool) -> None:
        super().__init__("the group's write failed: insert this job alone")
        self.maybe_stored = maybe_stored


class _ApplyAlone(Exception):
    """The outcome of a transition whose group was not written: its caller applies it
    alone (``maybe_applied``: the group may have been written before its answer was lost)."""

    def __init__(self, *, maybe_applied: bool) -> None:
        super().__init__("the group's write failed: apply this transition alone")
        self.maybe_applied = maybe_applied


@dataclass(frozen=True, slots=True)
class _Stamp:
    stamps: RootStamps
    seq: int


def _answered(exc: BaseException) -> bool:
    """Whether the database answered the statement with this error (it rolled it back:
    nothing of it was written), as opposed to no answer (it may have been written)."""
    return isinstance(exc, TransitionRefused) or (isinstance(exc, PersistenceError) and exc.answered)


def _void(stamp: _Stamp | None) -> None:
    if stamp is not None:
        stamp.stamps.void(stamp.seq)


def _is_stored(row: Row, job: Job) -> bool:
    """Whether the row is ``job`` as its insert wrote it (the same id, creation time and
    trace, drawn at random): a write that failed after the database stored it."""
    return bool(
        row["created_ns"] == job.created_ns
        and row["trace_id"] == job.trace.trace_id
        and row["root_span_id"] == job.trace.span_id
    )


def _shows(row: Row, t: Transition) -> bool:
    """Whether the job's row is the outcome of ``t`` itself (same status, attempt, time
    and worker): a write that failed after the database stored it."""
    return bool(
        row["status"] == str(t.status_to)
        and row["attempt"] == t.new_attempt
        and row["status_ns"] == t.at_ns
        and row["worker_id"] == (canonical_text(t.worker_id) if t.worker_id is not None else None)
    )


def _rebuild_reason(row: Row) -> str:
    """Why a claimed job's trace is rebuilt (the reconstructed-traces metric's reason)."""
    if row["trace_emitter"] is None:
        return "not_emitted"  # ended by a process that exports no telemetry
    if row["trace_lost_ns"] is not None:
        return "export_failed"  # a span of it failed to export or was dropped
    return "unconfirmed"  # its emitter died or stalled before confirming the export
