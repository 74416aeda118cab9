"""The PostgreSQL connector: many workers on many hosts.

Connections come from a :class:`psycopg_pool.AsyncConnectionPool` in autocommit mode:
each named query is one statement, its own transaction, one round trip (status changes
are single UPDATEs whose triggers write the history and the outbox). A batch runs in
one transaction in pipeline mode, so it too costs about one round trip.

Workers wake up on ``NOTIFY "orchestrator_jobs:<schema>"`` (sent at commit when a job
enters the queue, by the schema's triggers), received on one dedicated connection per
connector; when listening is impossible the connector falls back to polling.

Driver errors are logged once, here, with the target as ``host:port/dbname`` only (never
the URL, which may hold a password) and without the values involved, and re-raised as
:class:`~orchestrator.domain.PersistenceError` whose message names the operation and an
error id, nothing of the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import anyio
import psycopg
from psycopg import sql as pgsql
from psycopg.adapt import Dumper
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from orchestrator.domain import LockTimeout, PersistenceError
from orchestrator.stores import sql
from orchestrator.stores.connector import JSONText, Params, Row, TransitionRefused, new_error_id
from orchestrator.stores.core import SQLJobStore
from otel import logs
from otel.instrument import mark_logged
from otel.vocabulary import OperationEvent

__all__ = ["NOTIFY_CHANNEL", "PostgresConnector", "PostgresJobStore", "describe_target", "tcp_settings"]

log = logging.getLogger(__name__)

_Q: Final = sql.queries("postgres")

#: The channel prefix; the schema's name follows it ("orchestrator_jobs:public"), so
#: stores in different schemas of one database do not wake each other.
NOTIFY_CHANNEL: Final = "orchestrator_jobs"
#: SQLSTATE the schema's triggers raise for an illegal transition.
_ILLEGAL_TRANSITION: Final = "OR409"
#: SQLSTATE classes whose messages may quote the values involved (data exceptions,
#: constraint violations): only the class and the state are logged for them.
_DATA_CLASSES: Final = ("22", "23")

#: How long a statement waits for a lock another session holds (PostgreSQL's
#: ``lock_timeout``; ORCHESTRATOR_PG_LOCK_TIMEOUT_SECONDS), instead of as long as it is held.
DEFAULT_LOCK_TIMEOUT: Final = 30.0
#: A worker's own writes get the lock timeout plus this, on the client's clock: a server
#: that stops answering (a network that drops everything) cannot hold them either.
WRITE_MARGIN_SECONDS: Final = 5.0
#: Seconds the server gets to answer the cancellation of a statement past its deadline.
_CANCEL_SECONDS: Final = 5.0
#: SQLSTATE of a statement cancelled by ``lock_timeout``.
_LOCK_TIMEOUT: Final = "55P03"
#: A statement cancelled (its lock wait too long, or past its deadline): the server is there.
_STATEMENT_CANCELLED: Final = frozenset({_LOCK_TIMEOUT, "57014"})
#: How long ``open()`` waits for the pool's first connections.
_OPEN_TIMEOUT: Final = 10.0
#: How long an operation waits for a pooled connection.
_POOL_TIMEOUT: Final = 30.0
#: How long it waits while the server is known to be unreachable (the last operation
#: failed to connect): fail fast with PersistenceError instead of the full pool timeout.
_UNREACHABLE_POOL_TIMEOUT: Final = 1.0
#: libpq's connect timeout (seconds) of connections outside the pool, unless the URL sets one.
_CONNECT_TIMEOUT: Final = 10
#: libpq's TCP settings of every connection, unless the URL sets them: a server that stops
#: answering at the network level (a host gone, a firewall dropping everything) is seen as
#: gone within about a minute, instead of the kernel's defaults (two hours for an idle
#: connection, about fifteen minutes for one with unacknowledged data). They bound the
#: statements with no deadline of their own (claims, reads, the LISTEN connection's wait);
#: a lock wait sends nothing and is not affected. libpq ignores them on a Unix socket.
_TCP_DEFAULTS: Final[Mapping[str, int]] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}
#: The libpq release that knows tcp_user_timeout (12).
_TCP_USER_TIMEOUT_LIBPQ: Final = 120000
#: Backlog notifications drained after a wake-up, at most (each drain is one read).
_MAX_DRAINS: Final = 64
#: Seconds between two records of a failure that repeats while the server is down.
_LOG_INTERVAL: Final = 5.0

#: Result statuses of a statement that returned rows (psycopg's test for ``description``).
_ROWS_RETURNED: Final = frozenset(
    {psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.SINGLE_TUPLE, psycopg.pq.ExecStatus.TUPLES_CHUNK}
)

_Connection = psycopg.AsyncConnection[DictRow]


class _JsonbText(Dumper):
    """Binds canonical JSON text as jsonb: the queries need no casts, like SQLite's."""

    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return obj.encode()


class PostgresConnector:
    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        notify: bool = True,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self._url = url
        #: Seconds a statement waits for a lock (None: as long as it is held).
        self.lock_timeout = lock_timeout
        self.min_size = min_size
        self.max_size = max_size
        self.schema = schema
        self.notify = notify
        #: ``host:port/dbname``: what logs and errors may say about the server.
        self.target = describe_target(url)
        self._secrets = _secrets_of(url)
        self._has_connect_timeout = "connect_timeout" in _conninfo(url)
        #: The TCP settings the URL leaves to us (see _TCP_DEFAULTS).
        self._tcp = tcp_settings(url)
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._open_lock: anyio.Lock | None = None
        self._channel = NOTIFY_CHANNEL
        self._listener: _Connection | None = None
        self._listening = False
        self._listen_scope: anyio.CancelScope | None = None
        self._listen_done: anyio.Event | None = None
        self._closed = False
        self._wake: anyio.Event | None = None
        self._error_log = logs.RateLimitedLog(_LOG_INTERVAL)
        self._listen_log = logs.RateLimitedLog(_LOG_INTERVAL)
        #: The last operation failed at the connection level (server down or unreachable).
        self._unreachable = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (until the connector is opened again)."""
        return self._closed

    # -- connection -------------------------------------------------------------------

    async def open(self) -> None:
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            if self._pool is not None:
                return
            self._closed = False
            try:
                # One direct connection first: it fails fast with libpq's own reason (the
                # pool would retry in the background until its timeout).
                async with await self._connect() as conn:
                    if self.schema is not None:
                        await self._create_schema(conn)
                    row = await _fetchone(conn, _Q["_current_schema"])
                    self._channel = f"{NOTIFY_CHANNEL}:{row['schema'] if row else 'public'}"
            except psycopg.Error as exc:
                raise self._error("open", exc) from exc
            pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
                self._url,
                min_size=self.min_size,
                max_size=self.max_size,
                open=False,
                configure=self._configure,
                kwargs={"autocommit": True, "row_factory": dict_row, **self._tcp},
                timeout=_POOL_TIMEOUT,
                name=f"orchestrator-{self.target}",
            )
            try:
                await pool.open(wait=True, timeout=_OPEN_TIMEOUT)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await pool.close()
                if isinstance(exc, psycopg.Error):
                    raise self._error("open", exc) from exc
                raise
            self._pool = pool

    async def _connect(self) -> _Connection:
        """A connection outside the pool (the first check, LISTEN)."""
        kwargs: dict[str, Any] = dict(self._tcp)
        if not self._has_connect_timeout:
            kwargs["connect_timeout"] = _CONNECT_TIMEOUT
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, row_factory=dict_row, **kwargs)
        try:
            await self._configure(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _create_schema(self, conn: _Connection) -> None:
        assert self.schema is not None
        if await _fetchone(conn, _Q["_schema_exists"], {"schema": self.schema}) is None:
            await conn.execute(pgsql.SQL(_Q["_create_schema"]).format(schema=pgsql.Identifier(self.schema)))
        await conn.execute(pgsql.SQL(_Q["_set_search_path"]).format(schema=pgsql.Identifier(self.schema)))

    async def _configure(self, conn: _Connection) -> None:
        """Every connection: JSON text binds as jsonb, names resolve in the store's schema,
        and the schema's triggers notify only when this process wants them to."""
        conn.adapters.register_dumper(JSONText, _JsonbText)
        if self.lock_timeout is not None:
            await conn.execute(_Q["_lock_timeout"], {"lock_timeout": f"{max(1, round(self.lock_timeout * 1000))}ms"})
        if self.schema is not None:
            await conn.execute(pgsql.SQL(_Q["_set_search_path"]).format(schema=pgsql.Identifier(self.schema)))
        if not self.notify:
            await conn.execute(_Q["_notify_off"])

    async def close(self) -> None:
        self._closed = True
        self.wake_local()
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

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[_Connection]:
        """A pooled autocommit connection; driver errors mapped."""
        if self._pool is None and not self._closed:
            await self.open()
        pool = self._pool
        if pool is None:
            raise PersistenceError(f"the postgresql store is closed (while running {operation})")
        try:
            async with pool.connection(timeout=_UNREACHABLE_POOL_TIMEOUT if self._unreachable else None) as conn:
                yield conn
        except psycopg.Error as exc:
            if (
                isinstance(exc, psycopg.OperationalError)
                and not isinstance(exc, PoolTimeout)
                and exc.sqlstate not in _STATEMENT_CANCELLED
            ):
                self._unreachable = True  # the server is gone (a busy pool, a row held too long is not)
            raise self._error(operation, exc) from exc
        self._unreachable = False

    # -- queries ----------------------------------------------------------------------

    async def fetchone(self, name: str, params: Params | None = None) -> Row | None:
        async with self._connection(name) as conn:
            return await _fetchone(conn, _Q[name], params)

    async def fetchall(self, name: str, params: Params | None = None, *, deadline: float | None = None) -> list[Row]:
        async with self._connection(name) as conn:
            if deadline is not None:
                return await self._within(conn, name, params, deadline)
            cur = await conn.execute(_Q[name], params)
            return list(await cur.fetchall()) if _has_rows(cur) else []

    async def _within(self, conn: _Connection, name: str, params: Params | None, deadline: float) -> list[Row]:
        """The statement, cancelled in the server once ``deadline`` seconds have passed
        (the server then answers QueryCanceled: nothing was written). Only when the server
        does not answer the cancellation either (a network that drops everything) is the
        statement abandoned, its connection closed: it may still have been written."""
        asked = False
        found: list[Row] | None = None
        failed: Exception | None = None
        loop = asyncio.get_running_loop()
        canceller: asyncio.Task[None] | None = None
        with anyio.CancelScope() as abandon:

            async def cancel() -> None:
                nonlocal asked
                asked = True
                try:
                    with anyio.move_on_after(_CANCEL_SECONDS):
                        with contextlib.suppress(psycopg.Error):
                            await conn.cancel_safe(timeout=_CANCEL_SECONDS)
                        await anyio.sleep(_CANCEL_SECONDS)  # for the server's answer
                finally:
                    # Past its deadline the statement is abandoned, whatever happened to the
                    # request to cancel it (unless the statement ended meanwhile: this task
                    # is then cancelled, and the scope has nothing left to cut).
                    abandon.cancel()

            def due() -> None:
                nonlocal canceller
                canceller = loop.create_task(cancel())

            # A timer, not a task watching the statement: nearly every statement ends in
            # time, and a watching task (its spawn, its cancel scope, its cancellation) cost
            # each of them about half as much again as the statement's own Python work.
            timer = loop.call_later(deadline, due)
            try:
                cur = await conn.execute(_Q[name], params)
                found = list(await cur.fetchall()) if _has_rows(cur) else []
            except Exception as exc:  # noqa: BLE001 - raised below, with the deadline's verdict
                failed = exc
            finally:
                timer.cancel()
                if canceller is not None and not canceller.done():
                    canceller.cancel()  # the statement ended (or this task is cancelled): no more to ask
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait((canceller,))
        if canceller is not None and canceller.done() and not canceller.cancelled():
            unexpected = canceller.exception()  # (not a psycopg error: those it suppresses)
            if unexpected is not None:
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.ERROR,
                    "the cancellation of a statement past its deadline failed",
                    exc_info=unexpected,
                    operation=f"store.{name}",
                    target=self.target,
                )
        if isinstance(failed, psycopg.errors.QueryCanceled) and asked:
            raise self._past_deadline(name, deadline, written=False) from failed
        if asked and not conn.closed:
            # The cancellation it asked for may still reach the server: not on the next
            # borrower's statement (the pool replaces a closed connection).
            await conn.close()
        if failed is not None:
            raise failed  # mapped by _connection, as any statement's error (an administrator's cancel too)
        if found is None:
            raise self._past_deadline(name, deadline, written=None)
        return found

    def _past_deadline(self, operation: str, deadline: float, *, written: bool | None) -> PersistenceError:
        error_id = new_error_id()
        outcome = (
            "cancelled in the server, nothing written"
            if written is False
            else "the server did not answer its cancellation either: it may still have been written"
        )
        message = (
            f"the postgresql store at {self.target} did not {operation} within {deadline:g} s "
            f"({outcome}; error id {error_id})"
        )
        logs.event(
            log,
            logging.WARNING,
            OperationEvent.ERROR,
            message,
            operation=f"store.{operation}",
            error_category="persistence",
            error_id=error_id,
            target=self.target,
            deadline_s=deadline,
        )
        error = PersistenceError(message, error_id=error_id, transient=True, answered=written is False)
        mark_logged(error)
        return error

    async def batch(self, calls: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        operation = "+".join(name for name, _ in calls)
        # An explicit transaction, although the statements before a Sync form an implicit
        # one: after an error in an implicit one, psycopg takes statements it prepared in it
        # for still prepared ("prepared statement ... does not exist" on their next use).
        async with self._connection(operation) as conn, conn.transaction(), conn.pipeline() as pipeline:
            cursors = [await conn.execute(_Q[name], params) for name, params in calls]
            await pipeline.sync()
            return [list(await cur.fetchall()) if _has_rows(cur) else [] for cur in cursors]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        async with self._connection("transaction") as conn, conn.transaction():
            yield _Transaction(conn)

    def _error(self, operation: str, exc: psycopg.Error) -> PersistenceError:
        if exc.sqlstate == _ILLEGAL_TRANSITION:
            return TransitionRefused(f"the database refused an illegal transition ({operation})")
        error_id = new_error_id()
        state = exc.sqlstate or ""
        # The primary message of a data or constraint error may quote the values involved
        # (a snippet of a job's JSON): only its SQLSTATE is logged. Connection-level
        # messages come from libpq and hold no data (the URL's secrets are redacted).
        if state[:2] in _DATA_CLASSES:
            detail = f"SQLSTATE {state}"
        else:
            lines = ((exc.diag.message_primary if state else None) or str(exc)).strip().splitlines()
            detail = self._redact(lines[0]) if lines else type(exc).__name__
            detail = f"{detail} (SQLSTATE {state})" if state else detail
        # Connection-level failures repeat on every call while the server is down:
        # log them once per interval with a count; anything else is logged each time (a
        # lock timeout too: it is about one statement and its job).
        lock_wait = state == _LOCK_TIMEOUT
        flood = isinstance(exc, psycopg.OperationalError) and not lock_wait
        if not flood or self._error_log.ready():
            logs.event(
                log,
                logging.ERROR,
                OperationEvent.ERROR,
                f"postgresql {operation} failed ({self.target}): {detail} (error id {error_id})",
                operation=f"store.{operation}",
                error_category="persistence",
                error_id=error_id,
                target=self.target,
                error_type=type(exc).__name__,
                sqlstate=exc.sqlstate,
                suppressed=(self._error_log.take_suppressed() or None) if flood else None,
            )
        # Connection-level failures (no SQLSTATE: the server is down or unreachable, the pool
        # timed out) and the server's own "shutting down / too busy" states may pass.
        transient = (isinstance(exc, psycopg.OperationalError) and not state) or state[:2] in ("08", "53", "57")
        if lock_wait:
            reach = f"gave up after waiting {self.lock_timeout:g} s for a lock another session holds, to"
        else:
            reach = "could not be reached to" if transient else "failed to"
        message = f"the postgresql store at {self.target} {reach} {operation} (error id {error_id}; details in the log)"
        error = (
            LockTimeout(message, error_id=error_id)
            if lock_wait
            else PersistenceError(
                message,
                error_id=error_id,
                transient=transient,
                # An error with a SQLSTATE is the server's answer (the statement rolled
                # back), but for a lost connection (class 08, or none) and a server ending
                # the session (FATAL, PANIC: a commit may have been on its way to disk).
                answered=bool(state) and state[:2] != "08" and exc.diag.severity_nonlocalized == "ERROR",
            )
        )
        mark_logged(error)  # logged here (or counted in the next record): callers must not log it again
        return error

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- wake-ups ---------------------------------------------------------------------

    def wake_local(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    async def wait_for_notification(self, *, max_wait: float) -> None:
        """Return on a notification of an enqueue (any process), or after ``max_wait``.

        One task per connector listens on the dedicated connection; other tasks that
        wait at the same time are woken by it. Without notifications (``notify=False``,
        or LISTEN failing) this is a plain poll interval.
        """
        if self._closed:
            return
        if self._wake is None:
            self._wake = anyio.Event()
        wake = self._wake
        if not self.notify or self._listening:
            with anyio.move_on_after(max_wait):
                await wake.wait()
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
        if self.closed:  # close() stopped the listener (read through the property: it changed meanwhile)
            return
        if woke:
            self.wake_local()
        elif woke is None:  # listening failed: poll
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await wake.wait()

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
                    f"postgresql listen failed ({self.target}), polling instead: {type(exc).__name__}",
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
        conn = await self._connect()
        try:
            await conn.execute(pgsql.SQL(_Q["_listen"]).format(channel=pgsql.Identifier(self._channel)))
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


class _Transaction:
    """Named queries and migration scripts inside one transaction."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def execute(self, name: str, params: Params | None = None) -> None:
        await self._conn.execute(_Q[name], params)

    async def fetchall(self, name: str, params: Params | None = None) -> list[Row]:
        cur = await self._conn.execute(_Q[name], params)
        return list(await cur.fetchall())

    async def execute_script(self, script: str) -> None:
        await self._conn.execute(script.encode())  # a migration file of the package, not a value


class PostgresJobStore(SQLJobStore):
    """The job store on a PostgreSQL database (optionally in a schema of its own)."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        notify: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        write_seconds: float | None = None,
    ) -> None:
        """``lock_timeout``: seconds a statement waits for a lock another session holds;
        ``write_seconds``: the client's deadline on a worker's own writes (the lock
        timeout plus :data:`WRITE_MARGIN_SECONDS` unless given)."""
        connector = PostgresConnector(
            url, min_size=min_size, max_size=max_size, schema=schema, notify=notify, lock_timeout=lock_timeout
        )
        deadline = write_seconds if write_seconds is not None else lock_timeout + WRITE_MARGIN_SECONDS
        super().__init__(connector, write_seconds=deadline)
        self.pg = connector
        self.schema = schema
        self.target = connector.target


async def _fetchone(conn: _Connection, query: Any, params: Mapping[str, Any] | None = None) -> Row | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone() if _has_rows(cur) else None


def _has_rows(cur: psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows (``cur.description is not None``, without
    building its column objects: psycopg makes them afresh on every access)."""
    result = cur.pgresult
    return result is not None and (result.nfields > 0 or result.status in _ROWS_RETURNED)


def _conninfo(url: str) -> dict[str, Any]:
    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return {}


def tcp_settings(url: str) -> dict[str, int]:
    """The libpq TCP settings (:data:`_TCP_DEFAULTS`) that ``url`` does not set itself
    (a URL's own value wins; ``keepalives=0`` turns off the user timeout as well: libpq
    applies it only along with keepalives). None with a connection service: its file's
    settings are the operator's."""
    given = _conninfo(url)
    if given.get("service") or os.environ.get("PGSERVICE"):
        return {}  # a pg_service.conf entry may set them, and keyword arguments would override it
    settings = {key: value for key, value in _TCP_DEFAULTS.items() if key not in given}
    if psycopg.pq.version() < _TCP_USER_TIMEOUT_LIBPQ:
        settings.pop("tcp_user_timeout", None)  # an older libpq refuses the option
    return settings


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
