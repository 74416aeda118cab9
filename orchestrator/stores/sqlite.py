"""The SQLite connector: the embedded default.

One database file in WAL mode, shared safely by several processes on one machine.
Writes run in ``BEGIN IMMEDIATE`` transactions, so claims and transitions of different
processes serialise on SQLite's write lock; ``database is locked`` contention is retried
with backoff and never surfaces as a failure unless it lasts. Calls run in a worker
thread (the sqlite3 module blocks), one at a time per connector, on one connection that
:meth:`SQLiteConnector.close` closes (and nothing reopens).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from orchestrator.domain import PersistenceError
from orchestrator.stores import sql
from orchestrator.stores.connector import UNDECODABLE, Params, Row, TransitionRefused, new_error_id
from orchestrator.stores.core import SQLJobStore
from otel import logs
from otel.instrument import mark_logged
from otel.vocabulary import OperationEvent

__all__ = ["SQLiteConnector", "SQLiteJobStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_Q: Final = sql.queries("sqlite")
_LOCKED_MESSAGES: Final = ("database is locked", "database is busy", "database table is locked")
#: Primary result codes of a failure of the machine, not of the statement (a full disk, an
#: I/O error, a read-only or vanished file, memory): every statement fails the same way
#: until someone acts, so the caller is told the reason (SQLite's message for these names
#: no data) and the log records it once per interval with a count, not once per call.
_ENVIRONMENT_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)
#: Seconds between two records of a machine failure that repeats on every statement.
_ENVIRONMENT_LOG_INTERVAL: Final = 5.0


class _Undecodable(str):
    """Stored text that is not valid UTF-8, with U+FFFD for each bad sequence."""


def _text(data: bytes) -> str:
    """SQLite hands text over as bytes it never checked; text another tool wrote need not
    be UTF-8, and the default decoding would fail the whole query (a listing broken for
    good by one row). Such text reads with replacement characters, and the row says so."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return _Undecodable(data.decode(errors="replace"))


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    found = {column[0]: value for column, value in zip(cursor.description, row, strict=True)}
    if any(type(value) is _Undecodable for value in row):
        found[UNDECODABLE] = tuple(k for k, v in found.items() if type(v) is _Undecodable)
    return found


def _bind(params: Params | None) -> dict[str, Any]:
    """Lists are bound as JSON arrays (the queries read them with json_each)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in (params or {}).items()}


#: The oldest SQLite the store's statements run on: they use RETURNING (3.35) and
#: UPDATE ... FROM (3.33).
MIN_SQLITE_VERSION: Final = (3, 35, 0)


def _is_unbindable(exc: OverflowError) -> bool:
    """The driver could not bind a parameter: an integer beyond SQLite's 64 bits."""
    return "too large to convert to SQLite INTEGER" in str(exc)


def _primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (its extended code's low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def check_sqlite_version() -> None:
    """Refuse, at open, an SQLite library too old for the store's statements (they would
    fail at the first write instead)."""
    found = sqlite3.sqlite_version_info
    if found < MIN_SQLITE_VERSION:
        raise PersistenceError(
            f"SQLite {'.'.join(map(str, found))} is too old for the sqlite store: it needs "
            f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer (the library this Python's sqlite3 module uses); "
            "run it with a Python built against a newer SQLite, or use PostgreSQL (ORCHESTRATOR_DATABASE_URL)"
        )


class SQLiteConnector:
    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0, lock_retries: int = 8) -> None:
        self.path = path
        self.target = str(path)
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._lock_retries = lock_retries
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._wake: anyio.Event | None = None
        self._retry_log = logs.RateLimitedLog(5.0)
        #: One limiter per (kind of failure, operation): a different failure is never
        #: hidden behind the one that repeats.
        self._environment_logs: dict[tuple[str, str], logs.RateLimitedLog] = {}

    # -- connection -------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        check_sqlite_version()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error("open", exc) from exc
        async with self._limiter:
            try:
                self._conn = await anyio.to_thread.run_sync(self._connect)
            except sqlite3.Error as exc:
                raise self._error("open", exc) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            conn.row_factory = _dict_row
            conn.text_factory = _text
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._limiter:  # never under a statement another task is running
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
        self.wake_local()

    # -- queries ----------------------------------------------------------------------

    async def fetchone(self, name: str, params: Params | None = None) -> Row | None:
        found = await self.fetchall(name, params)
        return found[0] if found else None

    async def fetchall(self, name: str, params: Params | None = None, *, deadline: float | None = None) -> list[Row]:
        # ``deadline`` ignored: a statement waits for the write lock at most busy_timeout
        # times lock_retries, and a file does not stop answering.
        query = _Q[name]
        if query.lstrip()[:6].upper() == "SELECT":
            bound = _bind(params)
            return await self._run(name, lambda c: c.execute(query, bound).fetchall())
        return (await self.batch([(name, params or {})]))[0]

    async def batch(self, calls: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        bound = [(_Q[name], _bind(params)) for name, params in calls]

        def run(conn: sqlite3.Connection) -> list[list[Row]]:
            with _immediate(conn):
                return [conn.execute(query, params).fetchall() for query, params in bound]

        return await self._run(calls[0][0] if len(calls) == 1 else "+".join(n for n, _ in calls), run)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        async with self._limiter:
            conn = self._connection("transaction")
            await self._thread("transaction", lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield _Transaction(self, conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._thread("rollback", lambda: conn.in_transaction and conn.execute("ROLLBACK"))
                raise
            await self._thread("commit", lambda: conn.execute("COMMIT"))

    def _connection(self, operation: str) -> sqlite3.Connection:
        if self._conn is None:  # as PostgreSQL: a closed store is not silently reopened
            raise PersistenceError(f"the sqlite store is closed (while running {operation})")
        return self._conn

    async def _thread(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except sqlite3.Error as exc:
            raise self._error(operation, exc) from exc
        except OverflowError as exc:
            if not _is_unbindable(exc):
                raise
            raise self._error(operation, exc) from exc

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a thread, one call at a time, retrying lock contention
        and mapping driver errors."""
        async with self._limiter:
            for attempt in range(self._lock_retries + 1):
                conn = self._connection(operation)
                try:
                    return await anyio.to_thread.run_sync(fn, conn)
                except sqlite3.OperationalError as exc:
                    if not _is_locked(exc) or attempt == self._lock_retries:
                        raise self._error(operation, exc) from exc
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
                    raise self._error(operation, exc) from exc
                except OverflowError as exc:
                    if not _is_unbindable(exc):
                        raise
                    raise self._error(operation, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, operation: str, exc: sqlite3.Error | OSError | OverflowError) -> PersistenceError:
        if isinstance(exc, sqlite3.IntegrityError) and str(exc).startswith("illegal transition"):
            return TransitionRefused(f"the database refused an illegal transition ({operation})")
        error_id = new_error_id()
        environment = isinstance(exc, OSError) or (
            isinstance(exc, sqlite3.Error) and _primary_code(exc) in _ENVIRONMENT_CODES
        )
        locked = isinstance(exc, sqlite3.OperationalError) and _is_locked(exc)
        # SQLite's messages name tables, columns and constraints, never the values bound:
        # safe to log. The error shown to callers carries only the operation and the id.
        limiter = self._environment_log(exc, operation) if environment else None
        logged = limiter is None or limiter.ready()
        if logged:
            suppressed = limiter.take_suppressed() if limiter is not None else 0
            logs.event(
                log,
                logging.ERROR,
                OperationEvent.ERROR,
                f"sqlite {operation} failed: {exc} (error id {error_id})"
                + (f"; {suppressed} more failures like it since the last record" if suppressed else ""),
                operation=f"store.{operation}",
                error_category="persistence",
                error_id=error_id,
                error_type=type(exc).__name__,
                sqlite_error=getattr(exc, "sqlite_errorname", None),
                path=self.target,
                suppressed=suppressed or None,
            )
        # A reason the user can act on (a full disk, a directory that cannot be written, a
        # file that is not a database) is said, not only the id.
        if isinstance(exc, OSError):
            reason = f": {exc.strerror or exc}"
        elif isinstance(exc, OverflowError):
            reason = ": a number out of the database's range (64-bit integers)"
        elif environment or locked or operation == "open":
            reason = f": {exc}"
        else:
            reason = ""
        where = "details in the log" if logged else f"logged once per {_ENVIRONMENT_LOG_INTERVAL:g} s while it repeats"
        error = PersistenceError(
            f"the sqlite store at {self.target} failed to {operation}{reason} (error id {error_id}; {where})",
            error_id=error_id,
            transient=locked,
            answered=True,  # rolled back: a file does not lose its answer
        )
        mark_logged(error)  # logged here: the entry points it passes through must not log it again
        return error

    def _environment_log(self, exc: Exception, operation: str) -> logs.RateLimitedLog:
        kind = type(exc).__name__ if isinstance(exc, OSError) else str(getattr(exc, "sqlite_errorname", "?"))
        return self._environment_logs.setdefault((kind, operation), logs.RateLimitedLog(_ENVIRONMENT_LOG_INTERVAL))

    # -- wake-ups ---------------------------------------------------------------------

    async def wait_for_notification(self, *, max_wait: float) -> None:
        """In-process wake-up on enqueue; other processes are seen by polling."""
        if self._wake is None:
            self._wake = anyio.Event()
        with anyio.move_on_after(max_wait):
            await self._wake.wait()
        self._wake = None

    def wake_local(self) -> None:
        if self._wake is not None:
            self._wake.set()


class _Transaction:
    """Named queries and migration scripts inside the connector's open transaction."""

    def __init__(self, connector: SQLiteConnector, conn: sqlite3.Connection) -> None:
        self._connector, self._conn = connector, conn

    async def execute(self, name: str, params: Params | None = None) -> None:
        query, bound = _Q[name], _bind(params)
        await self._connector._thread(name, lambda: self._conn.execute(query, bound))

    async def fetchall(self, name: str, params: Params | None = None) -> list[Row]:
        query, bound = _Q[name], _bind(params)
        return await self._connector._thread(name, lambda: self._conn.execute(query, bound).fetchall())

    async def execute_script(self, script: str) -> None:
        def run() -> None:
            for statement in _statements(script):
                self._conn.execute(statement)

        await self._connector._thread("migrate", run)


class SQLiteJobStore(SQLJobStore):
    """The job store on a SQLite file (the embedded default)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0, lock_retries: int = 8) -> None:
        super().__init__(SQLiteConnector(path, busy_timeout=busy_timeout, lock_retries=lock_retries))
        self.path = path


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Any:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return any(m in str(exc) for m in _LOCKED_MESSAGES)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3 runs one at a time in a transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(ln.strip().startswith("--") for ln in buffer.strip().splitlines()):
        statements.append(buffer.strip())
    return statements
