"""PostgreSQL job store: many workers on many hosts.

Connections come from a :class:`psycopg_pool.AsyncConnectionPool`. Every status
change is one statement (a data-modifying CTE: compare-and-set UPDATE, history
INSERT, and a ``pg_notify`` when the job enters the queue), so the common path is one
round trip. Claims take the oldest Queued row with ``FOR UPDATE SKIP LOCKED``, so
concurrent workers never claim the same job and never wait on each other.

Workers wake up on ``NOTIFY orchestrator_jobs`` (sent at commit by transitions into
Queued), received on one dedicated autocommit connection per store; when listening
is impossible the store falls back to polling.

Driver errors are logged once, here, with the target as ``host:port/dbname`` only
(never the URL, which may hold a password), and re-raised as
:class:`~orchestrator.domain.PersistenceError`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import anyio
import psycopg
from psycopg import sql as pgsql
from psycopg.rows import DictRow, TupleRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

__all__ = ["NOTIFY_CHANNEL", "PostgresJobStore"]

log = logging.getLogger(__name__)

_Q = sql.queries("postgres")

#: The channel transitions into Queued notify (the name is spelled in postgres.sql).
NOTIFY_CHANNEL: Final = "orchestrator_jobs"

#: How long ``open()`` waits for the pool's first connections.
_OPEN_TIMEOUT: Final = 10.0
#: How long an operation waits for a pooled connection.
_POOL_TIMEOUT: Final = 30.0
#: How long it waits while the server is known to be unreachable (the last operation
#: failed to connect): fail fast with PersistenceError instead of the full pool timeout.
_UNREACHABLE_POOL_TIMEOUT: Final = 1.0
#: libpq's connect timeout (seconds) of connections outside the pool, unless the URL sets one.
_CONNECT_TIMEOUT: Final = 10
#: Backlog notifications drained after a wake-up, at most (each drain is one read).
_MAX_DRAINS: Final = 64
#: Seconds between two records of a failure that repeats while the server is down.
_LOG_INTERVAL: Final = 5.0

_Connection = psycopg.AsyncConnection[TupleRow]


class PostgresJobStore:
    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        notify: bool = True,
    ) -> None:
        self._url = url
        self.schema_version = 0
        self.min_size = min_size
        self.max_size = max_size
        self.schema = schema
        self.notify = notify
        #: ``host:port/dbname``: what logs and errors may say about the server.
        self.target = describe_target(url)
        self._secrets = _secrets_of(url)
        self._has_connect_timeout = "connect_timeout" in _conninfo(url)
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._open_lock: anyio.Lock | None = None
        self._listener: _Connection | None = None
        self._listening = False
        self._listen_scope: anyio.CancelScope | None = None
        self._listen_done: anyio.Event | None = None
        self._closed = False
        self._wake: anyio.Event | None = None
        self._error_log = logs.RateLimitedLog(_LOG_INTERVAL)
        #: The last operation failed at the connection level (server down or unreachable).
        self._unreachable = False
        self._listen_log = logs.RateLimitedLog(_LOG_INTERVAL)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (until the store is opened again)."""
        return self._closed

    def __repr__(self) -> str:
        return f"PostgresJobStore({self.target!r}, schema={self.schema!r})"

    # -- connection -------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            if self._pool is not None:
                return
            self._closed = False
            try:
                # One direct connection first: it fails fast with libpq's own reason
                # (the pool would retry in the background until its timeout).
                async with await self._connect(autocommit=False) as conn:
                    if self.schema is not None:
                        await self._configure(conn)
                    await self._migrate(conn, apply=migrate)
            except psycopg.Error as exc:
                raise self._persistence_error("open", exc) from exc
            pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
                self._url,
                min_size=self.min_size,
                max_size=self.max_size,
                open=False,
                configure=self._configure if self.schema is not None else None,
                # Autocommit: a statement commits on its own, without the BEGIN and
                # COMMIT round trips of an implicit transaction. Every status change is
                # one statement; what writes several opens a transaction explicitly.
                kwargs={"autocommit": True},
                timeout=_POOL_TIMEOUT,
                name=f"orchestrator-{self.target}",
            )
            try:
                await pool.open(wait=True, timeout=_OPEN_TIMEOUT)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await pool.close()
                if isinstance(exc, psycopg.Error):
                    raise self._persistence_error("open", exc) from exc
                raise
            self._pool = pool

    async def _connect(self, *, autocommit: bool) -> _Connection:
        """A connection outside the pool (migrations, LISTEN)."""
        kwargs: dict[str, Any] = {}
        if not self._has_connect_timeout:
            kwargs["connect_timeout"] = _CONNECT_TIMEOUT
        return await psycopg.AsyncConnection.connect(self._url, autocommit=autocommit, **kwargs)

    async def _configure(self, conn: _Connection) -> None:
        """Pool callback: every connection resolves names in the store's schema."""
        assert self.schema is not None
        await conn.execute(pgsql.SQL(_Q["set_search_path"]).format(schema=pgsql.Identifier(self.schema)))
        await conn.commit()

    async def _migrate(self, conn: _Connection, *, apply: bool) -> None:
        async with conn.transaction():
            await conn.execute(_Q["migration_lock"])
            if self.schema is not None:
                cur = await conn.execute(_Q["schema_exists"], {"schema": self.schema})
                if await cur.fetchone() is None:
                    await conn.execute(pgsql.SQL(_Q["create_schema"]).format(schema=pgsql.Identifier(self.schema)))
            await conn.execute(_Q["create_migrations_table"])
            cur = await conn.execute(_Q["applied_migrations"])
            applied = {r[0] for r in await cur.fetchall()}
            pending = [m for m in sql.migrations("postgres") if m.version not in applied]
            if pending and not apply:
                raise sql.SchemaOutdated(self.target, [f"{m.version:04d}_{m.name}" for m in pending])
            for migration in pending:
                await conn.execute(migration.sql)
                await conn.execute(
                    _Q["record_migration"],
                    {"version": migration.version, "name": migration.name, "applied_ns": time.time_ns()},
                )
                log.info("applied migration %04d_%s", migration.version, migration.name)
            self.schema_version = max([*applied, *(m.version for m in pending)], default=0)

    async def close(self) -> None:
        self._closed = True
        self._wake_local()
        with anyio.CancelScope(shield=True):
            # Stop a task listening on the dedicated connection before closing it
            # (closing the socket under a pending wait would confuse the event loop).
            scope, done = self._listen_scope, self._listen_done
            if scope is not None and done is not None:
                scope.cancel()
                with anyio.move_on_after(5):
                    await done.wait()
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
            if listener is not None:
                await listener.close()
            if pool is not None:
                await pool.close()

    async def ping(self) -> None:
        async with self._connection("ping") as conn:
            await conn.execute(_Q["ping"])

    @contextlib.asynccontextmanager
    async def connection(self, operation: str) -> AsyncIterator[_Connection]:
        """A pooled connection, its transaction committed on exit, driver errors mapped to
        :class:`PersistenceError` (for companion stores)."""
        async with self._connection(operation) as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[_Connection]:
        """A pooled autocommit connection (each statement is its own transaction unless
        the caller opens one); driver errors mapped."""
        if self._pool is None and not self._closed:
            await self.open()
        pool = self._pool
        if pool is None:
            raise PersistenceError(f"postgresql {operation} failed: the store is closed")
        try:
            async with pool.connection(timeout=_UNREACHABLE_POOL_TIMEOUT if self._unreachable else None) as conn:
                yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, PoolTimeout):
                self._unreachable = True  # the server is gone (a busy pool is not)
            raise self._persistence_error(operation, exc) from exc
        self._unreachable = False

    def _persistence_error(self, operation: str, exc: psycopg.Error) -> PersistenceError:
        detail = self._redact(str(exc).strip() or type(exc).__name__)
        message = f"postgresql {operation} failed ({self.target}): {detail}"
        # Connection-level failures repeat on every call while the server is down:
        # log them once per interval with a count; anything else is logged each time.
        flood = isinstance(exc, psycopg.OperationalError)
        if not flood or self._error_log.ready():
            logs.event(
                log,
                logging.ERROR,
                OperationEvent.ERROR,
                message,
                operation=f"store.{operation}",
                error_category="persistence",
                target=self.target,
                error_type=type(exc).__name__,
                sqlstate=exc.sqlstate,
                suppressed=(self._error_log.take_suppressed() or None) if flood else None,
            )
        error = PersistenceError(message)
        mark_logged(error)  # logged here (or counted in the next record): callers must not log it again
        return error

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- writes -----------------------------------------------------------------------

    async def insert(self, job: Job) -> None:
        history = {
            "job_id": job.id,
            "status_from": None,
            "status_to": str(job.status),
            "reason": "created",
            "at_ns": job.created_ns,
            "duration_ms": 0.0,
            "attempt": job.attempt,
            "worker_id": None,
        }
        async with self._connection("insert") as conn, conn.transaction():
            await conn.execute(_Q["insert_job"], rows.job_to_row(job))
            await conn.execute(_Q["insert_history"], history)

    async def insert_enqueued(self, job: Job, transition: Transition) -> Job:
        params = create_params(job, transition)
        params["notify"] = self.notify
        async with self._connection("insert") as conn:
            row = await fetchone(conn, _Q["create_job"], params)
        assert row is not None  # an INSERT ... RETURNING that did not raise returned its row
        queued = rows.job_from_row(row)
        self._wake_local()
        return queued

    async def apply(self, transition: Transition) -> Job:
        job, _ = await self._apply(transition, with_history=False)
        return job

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        job, history = await self._apply(transition, with_history=True)
        return job, history

    async def _apply(self, transition: Transition, *, with_history: bool) -> tuple[Job, list[LifecycleEntry]]:
        params = rows.transition_params(transition)
        params["notify"] = self.notify
        params["with_history"] = with_history
        async with self._connection("apply") as conn:
            row = await fetchone(conn, _Q["apply_transition"], params)
            if row is None:
                current = await fetchone(conn, _Q["get_job"], {"id": transition.job_id})
                if current is None:
                    raise JobNotFound(transition.job_id)
                raise TransitionConflict(
                    transition.job_id,
                    transition.status_from,
                    JobStatus(current["status"]),
                    transition.status_to,
                    project_id=current["project_id"],
                )
        job = rows.job_from_row(row)
        if job.status is JobStatus.QUEUED:
            self._wake_local()
        history = [rows.entry_from_row(r) for r in row["history"] or ()] if with_history else []
        return job, history

    async def claim(self, *, worker_id: str, lease_ns: int, now_ns: int) -> Job | None:
        params = {
            "worker_id": worker_id,
            "now_ns": now_ns,
            "expires_ns": now_ns + lease_ns,
            "timestamp": rows.iso(now_ns),
        }
        async with self._connection("claim") as conn:
            row = await fetchone(conn, _Q["claim"], params)
        return rows.job_from_row(row) if row is not None else None

    async def renew_leases(self, job_ids: Sequence[str], *, worker_id: str, expires_ns: int) -> set[str]:
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "worker_id": worker_id, "expires_ns": expires_ns}
        async with self._connection("renew_leases") as conn:
            found = await fetchall(conn, _Q["renew_leases"], params)
        return {r["id"] for r in found}

    async def request_cancel(self, job_id: str, reason: str) -> Job:
        async with self._connection("request_cancel") as conn:
            row = await fetchone(conn, _Q["request_cancel"], {"id": job_id, "reason": reason})
            if row is None:
                row = await fetchone(conn, _Q["get_job"], {"id": job_id})
                if row is None:
                    raise JobNotFound(job_id)
        return rows.job_from_row(row)

    # -- reads ------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        async with self._connection("get") as conn:
            row = await fetchone(conn, _Q["get_job"], {"id": job_id})
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
        clauses: list[pgsql.Composable] = []
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            clauses.append(pgsql.SQL("status = %(status)s"))
            params["status"] = str(status)
        if project_id is not None:
            clauses.append(pgsql.SQL("project_id = %(project_id)s"))
            params["project_id"] = project_id
        if after is not None:
            clauses.append(pgsql.SQL("id < %(after)s"))
            params["after"] = after
        where = pgsql.SQL("WHERE ") + pgsql.SQL(" AND ").join(clauses) if clauses else pgsql.SQL("")
        query = pgsql.SQL(_Q["list_jobs"]).format(where=where)
        async with self._connection("list") as conn:
            found = await fetchall(conn, query, params)
        return [rows.job_from_row(r) for r in found]

    async def cancel_requests(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        async with self._connection("cancel_requests") as conn:
            found = await fetchall(conn, _Q["cancel_requests"], {"ids": list(job_ids)})
        return {r["id"]: r["cancel_requested"] for r in found}

    async def expired(self, *, now_ns: int, limit: int = 100) -> list[Job]:
        async with self._connection("expired") as conn:
            found = await fetchall(conn, _Q["expired"], {"now_ns": now_ns, "limit": limit})
        return [rows.job_from_row(r) for r in found]

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        async with self._connection("history") as conn:
            found = await fetchall(conn, _Q["history"], {"job_id": job_id})
        return [rows.entry_from_row(r) for r in found]

    async def queue_depth(self) -> int:
        async with self._connection("queue_depth") as conn:
            row = await fetchone(conn, _Q["queue_depth"])
        assert row is not None
        return int(row["depth"])

    # -- wake-ups ---------------------------------------------------------------------

    async def wait_for_work(self, *, max_wait: float) -> None:
        """Return on a notification of an enqueue (any process), or after ``max_wait``.

        One task per store listens on the dedicated connection; other tasks of the
        same store that wait at the same time are woken by it. Without notifications
        (``notify=False``, or LISTEN failing) this is a plain poll interval.
        """
        if self._closed:
            return
        if not self.notify:
            await anyio.sleep(max_wait)
            return
        if self._wake is None:
            self._wake = anyio.Event()
        if self._listening:
            with anyio.move_on_after(max_wait):
                await self._wake.wait()
            return
        deadline = anyio.current_time() + max_wait
        woke: bool | None = False
        self._listening, self._listen_done = True, anyio.Event()
        try:
            with anyio.CancelScope() as self._listen_scope:
                woke = await self._listen(max_wait)
        finally:
            self._listening, self._listen_scope = False, None
            self._listen_done.set()
        if self.closed:  # close() stopped the listener
            return
        if woke:
            self._wake_local()
        elif woke is None:  # listening failed: poll
            await anyio.sleep(max(0.0, deadline - anyio.current_time()))

    async def _listen(self, max_wait: float) -> bool | None:
        """True on a notification, False on timeout, None when listening failed."""
        try:
            conn = await self._listener_connection()
            woke = False
            async with contextlib.aclosing(conn.notifies(timeout=max_wait, stop_after=1)) as received:
                async for _ in received:
                    woke = True
                    break
            if woke:
                await self._drain(conn)
            return woke
        except psycopg.Error as exc:
            if not self._closed and self._listen_log.ready():
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.ERROR,
                    f"postgresql listen failed ({self.target}), polling instead: {self._redact(str(exc).strip())}",
                    operation="store.wait_for_work",
                    error_category="persistence",
                    target=self.target,
                    error_type=type(exc).__name__,
                    suppressed=self._listen_log.take_suppressed() or None,
                )
            await self._drop_listener()
            return None

    async def _listener_connection(self) -> _Connection:
        conn = self._listener
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self._drop_listener()
        conn = await self._connect(autocommit=True)
        try:
            await conn.execute(_Q["listen"])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._listener = conn
        return conn

    async def _drain(self, conn: _Connection) -> None:
        """Consume notifications already received, so a burst wakes the caller once."""
        for _ in range(_MAX_DRAINS):
            got = False
            async with contextlib.aclosing(conn.notifies(timeout=0)) as backlog:
                async for _notify in backlog:
                    got = True
            if not got:
                return

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _wake_local(self) -> None:
        """Wake the tasks of this store waiting for work (without a server round trip)."""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()


def create_params(job: Job, transition: Transition) -> dict[str, Any]:
    """The parameters of ``create_job`` (without ``notify``): the job row as the
    Pending -> Queued update would leave it, and what its two history rows and the
    outbox need."""
    t = transition
    if (job.status, t.status_from, t.status_to) != (JobStatus.PENDING,) * 2 + (JobStatus.QUEUED,) or t.job_id != job.id:
        raise ValueError(f"insert_enqueued takes a new Pending job and its Pending -> Queued transition: {t}")
    return {
        **rows.job_to_row(job),
        "status": str(t.status_to),
        "status_ns": t.at_ns,
        "attempt": t.new_attempt,
        "queued_ns": t.at_ns,
        "reason": t.reason,
        "lease_owner": t.lease_owner,
        "lease_expires_ns": t.lease_expires_ns,
        "cancel_requested": None,
        "created_status": str(job.status),
        "created_attempt": job.attempt,
        "duration_ms": t.duration_ms,
        "worker_id": t.worker_id,
        **rows.outbox_params(t),
    }


async def fetchone(conn: _Connection, query: Any, params: Mapping[str, Any] | None = None) -> DictRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def fetchall(conn: _Connection, query: Any, params: Mapping[str, Any] | None = None) -> list[DictRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


def _conninfo(url: str) -> dict[str, Any]:
    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return {}


def describe_target(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL or key=value conninfo, nothing more."""
    info = _conninfo(url)
    if not info:
        return "postgresql (unparsable connection string)"
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    port = str(info.get("port") or "5432")
    dbname = str(info.get("dbname") or info.get("user") or "")
    return f"{host}:{port}/{dbname}"


def _secrets_of(url: str) -> tuple[str, ...]:
    """Strings that must never appear in a message: the URL and its password."""
    found = {url}
    password = _conninfo(url).get("password")
    if password:
        found.add(str(password))
    with contextlib.suppress(ValueError):
        split = urlsplit(url)
        if split.password:
            found.update({split.password, unquote(split.password)})
    return tuple(sorted((s for s in found if s), key=len, reverse=True))
