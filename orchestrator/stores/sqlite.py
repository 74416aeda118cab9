"""SQLite job store: the embedded default.

One database file in WAL mode, shared safely by several processes on one machine.
Writes run in ``BEGIN IMMEDIATE`` transactions, so claims and transitions of
different processes serialise on SQLite's write lock; ``database is locked``
contention is retried with backoff and never surfaces as a failure unless it lasts.
Calls run in a worker thread (the sqlite3 module blocks), one at a time per store.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from orchestrator.domain import (
    Job,
    JobNotFound,
    JobStatus,
    LifecycleEntry,
    PersistenceError,
    Transition,
    TransitionConflict,
)
from orchestrator.stores import rows, sql
from otel import logs
from otel.instrument import mark_logged
from otel.vocabulary import OperationEvent

__all__ = ["SQLiteJobStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_Q = sql.queries("sqlite")
_LOCKED_MESSAGES = ("database is locked", "database is busy", "database table is locked")


class SQLiteJobStore:
    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 5.0,
        lock_retries: int = 8,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._lock_retries = lock_retries
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._migrate_on_open = True
        self.schema_version = 0
        self._limiter = anyio.CapacityLimiter(1)
        self._wake: anyio.Event | None = None
        self._retry_log = logs.RateLimitedLog(5.0)

    # -- connection -------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PersistenceError(f"cannot create the data directory {self.path.parent}: {exc}") from exc
        self._migrate_on_open = migrate
        self._closed = False
        await self._run("open", self._open_sync)

    def _open_sync(self, _: sqlite3.Connection | None = None) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL)"
            )
            applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            pending = [m for m in sql.migrations("sqlite") if m.version not in applied]
            if pending and not self._migrate_on_open:
                raise sql.SchemaOutdated(str(self.path), [f"{m.version:04d}_{m.name}" for m in pending])
            for migration in pending:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time_ns()),
                )
                log.info("applied migration %04d_%s", migration.version, migration.name)
            conn.execute("COMMIT")
            self.schema_version = max([*applied, *(m.version for m in pending)], default=0)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def ping(self) -> None:
        await self._run("ping", lambda c: c.execute("SELECT 1").fetchone())

    async def run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the store's thread, retrying lock contention and
        mapping driver errors to :class:`PersistenceError` (for companion stores)."""
        return await self._run(operation, fn)

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a thread, retrying lock contention, mapping driver errors."""
        if self._closed:  # as PostgreSQL: a closed store is not silently reopened
            raise PersistenceError(f"sqlite {operation} failed: the store is closed")
        async with self._limiter:
            for attempt in range(self._lock_retries + 1):
                try:
                    return await anyio.to_thread.run_sync(self._call, fn)
                except sqlite3.OperationalError as exc:
                    if not _is_locked(exc) or attempt == self._lock_retries:
                        raise self._persistence_error(operation, exc) from exc
                    delay = min(0.01 * 2**attempt, 1.0) * (0.5 + random.random())
                    if self._retry_log.ready():
                        logs.event(
                            log,
                            logging.WARNING,
                            OperationEvent.STORE_RETRY,
                            "sqlite is busy, retrying",
                            operation=operation,
                            attempt=attempt + 1,
                            delay_ms=round(delay * 1000, 1),
                        )
                    await anyio.sleep(delay)
                except sqlite3.Error as exc:
                    raise self._persistence_error(operation, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._open_sync()
        assert self._conn is not None
        return fn(self._conn)

    def _persistence_error(self, operation: str, exc: sqlite3.Error) -> PersistenceError:
        logs.event(
            log,
            logging.ERROR,
            OperationEvent.ERROR,
            f"sqlite {operation} failed: {exc}",
            operation=f"store.{operation}",
            error_category="persistence",
            path=str(self.path),
        )
        error = PersistenceError(f"sqlite {operation} failed: {exc}")
        mark_logged(error)  # logged here: the entry points it passes through must not log it again
        return error

    # -- writes -----------------------------------------------------------------------

    async def insert(self, job: Job) -> None:
        row = rows.job_to_row(job)

        def insert(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(_Q["insert_job"], row)
                conn.execute(_Q["insert_history"], _creation_history(job))

        await self._run("insert", insert)

    async def insert_enqueued(self, job: Job, transition: Transition) -> Job:
        if (job.status, transition.status_from, transition.status_to) != (
            JobStatus.PENDING,
            JobStatus.PENDING,
            JobStatus.QUEUED,
        ) or transition.job_id != job.id:
            raise ValueError(f"insert_enqueued takes a Pending job and its enqueue transition: {transition}")
        row = rows.job_to_row(job)

        def insert_enqueued(conn: sqlite3.Connection) -> Job:
            # insert() and apply() in one transaction: the same statements, one commit.
            with transaction(conn):
                conn.execute(_Q["insert_job"], row)
                conn.execute(_Q["insert_history"], _creation_history(job))
                queued = _apply(conn, transition)
                assert queued is not None  # the job was inserted Pending just above
                return rows.job_from_row(queued)

        queued = await self._run("insert", insert_enqueued)
        self._notify()
        return queued

    async def apply(self, transition: Transition) -> Job:
        job, _ = await self._apply(transition, with_history=False)
        return job

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        job, history = await self._apply(transition, with_history=True)
        return job, history

    async def _apply(self, transition: Transition, *, with_history: bool) -> tuple[Job, list[LifecycleEntry]]:
        def apply(conn: sqlite3.Connection) -> tuple[Job, list[LifecycleEntry]]:
            with transaction(conn):
                row = _apply(conn, transition)
                if row is None:
                    current = conn.execute(_Q["get_job"], {"id": transition.job_id}).fetchone()
                    if current is None:
                        raise JobNotFound(transition.job_id)
                    raise TransitionConflict(
                        transition.job_id,
                        transition.status_from,
                        JobStatus(current["status"]),
                        transition.status_to,
                        project_id=current["project_id"],
                    )
                history = []
                if with_history:
                    found = conn.execute(_Q["history"], {"job_id": transition.job_id}).fetchall()
                    history = [rows.entry_from_row(r) for r in found]
                return rows.job_from_row(row), history

        job, history = await self._run("apply", apply)
        if job.status is JobStatus.QUEUED:
            self._notify()
        return job, history

    async def claim(self, *, worker_id: str, lease_ns: int, now_ns: int) -> Job | None:
        def claim(conn: sqlite3.Connection) -> Job | None:
            with transaction(conn):
                candidate = conn.execute(_Q["next_claimable"]).fetchone()
                if candidate is None:
                    return None
                transition = Transition(
                    job_id=candidate["id"],
                    status_from=JobStatus.QUEUED,
                    status_to=JobStatus.RUNNING,
                    reason="claimed",
                    at_ns=now_ns,
                    duration_ms=max(0.0, (now_ns - candidate["status_ns"]) / 1e6),
                    attempt=candidate["attempt"],
                    new_attempt=candidate["attempt"],
                    worker_id=worker_id,
                    lease_owner=worker_id,
                    lease_expires_ns=now_ns + lease_ns,
                )
                return rows.job_from_row(_apply(conn, transition))

        return await self._run("claim", claim)

    async def renew_leases(self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int) -> set[str]:
        def renew(conn: sqlite3.Connection) -> set[str]:
            owned = set()
            with transaction(conn):
                for job_id in job_ids:
                    params = {"id": job_id, "worker_id": worker_id, "expires_ns": expires_ns}
                    if conn.execute(_Q["renew_lease"], params).fetchone():
                        owned.add(job_id)
            return owned

        return await self._run("renew_leases", renew) if job_ids else set()

    async def request_cancel(self, job_id: str, reason: str) -> Job:
        def request(conn: sqlite3.Connection) -> Job:
            with transaction(conn):
                row = conn.execute(_Q["request_cancel"], {"id": job_id, "reason": reason}).fetchone()
                if row is None:
                    row = conn.execute(_Q["get_job"], {"id": job_id}).fetchone()
                    if row is None:
                        raise JobNotFound(job_id)
                return rows.job_from_row(row)

        return await self._run("request_cancel", request)

    # -- reads ------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        row = await self._run("get", lambda c: c.execute(_Q["get_job"], {"id": job_id}).fetchone())
        if row is None:
            raise JobNotFound(job_id)
        return rows.job_from_row(row)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        project_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Job]:
        clauses, params = [], {"limit": limit}
        if status is not None:
            clauses.append("status = :status")
            params["status"] = str(status)  # type: ignore[assignment]
        if project_id is not None:
            clauses.append("project_id = :project_id")
            params["project_id"] = project_id  # type: ignore[assignment]
        if after is not None:
            clauses.append("id < :after")
            params["after"] = after  # type: ignore[assignment]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT :limit"  # noqa: S608 - fixed clauses, bound values
        found = await self._run("list", lambda c: c.execute(query, params).fetchall())
        return [rows.job_from_row(r) for r in found]

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        where = f"id IN ({marks}) AND cancel_requested IS NOT NULL"
        query = f"SELECT id, cancel_requested FROM jobs WHERE {where}"  # noqa: S608 - placeholders only
        found = await self._run("cancel_requests", lambda c: c.execute(query, list(job_ids)).fetchall())
        return {r["id"]: r["cancel_requested"] for r in found}

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        params = {"now_ns": now_ns, "limit": limit}
        found = await self._run("expired", lambda c: c.execute(_Q["expired"], params).fetchall())
        return [rows.job_from_row(r) for r in found]

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        found = await self._run("history", lambda c: c.execute(_Q["history"], {"job_id": job_id}).fetchall())
        return [rows.entry_from_row(r) for r in found]

    async def queue_depth(self) -> int:
        row = await self._run("queue_depth", lambda c: c.execute(_Q["queue_depth"]).fetchone())
        return int(row["depth"])

    # -- wake-ups ---------------------------------------------------------------------

    async def wait_for_work(self, *, max_wait: float) -> None:
        """In-process wake-up on enqueue; other processes are seen by polling."""
        if self._wake is None:
            self._wake = anyio.Event()
        with anyio.move_on_after(max_wait):
            await self._wake.wait()
        self._wake = None

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _creation_history(job: Job) -> dict[str, Any]:
    """The history row of a job's creation (none -> its initial status)."""
    return {
        "job_id": job.id,
        "status_from": None,
        "status_to": str(job.status),
        "reason": "created",
        "at_ns": job.created_ns,
        "duration_ms": 0.0,
        "attempt": job.attempt,
        "worker_id": None,
    }


def _apply(conn: sqlite3.Connection, transition: Transition) -> Any:
    """The compare-and-set update, then (if it matched) the history row and the webhook
    outbox rows, inside the caller's transaction. None when the job did not match."""
    params = rows.transition_params(transition)
    row = conn.execute(_Q["apply_transition"], params).fetchone()
    if row is not None:
        conn.execute(_Q["insert_history"], {**params, "attempt": transition.new_attempt})
        conn.execute(_Q["insert_outbox"], params)
    return row


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return any(m in str(exc) for m in _LOCKED_MESSAGES)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3 executes one at a time in a transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(ln.strip().startswith("--") for ln in buffer.strip().splitlines()):
        statements.append(buffer.strip())
    return statements
