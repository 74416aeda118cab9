"""The SQLite store closes every connection it opens (issue 19).

Python 3.13 reports a ``sqlite3.Connection`` that is garbage-collected while open as a
``ResourceWarning``; 3.11 stays silent. These tests do not depend on either: they record
every connection ``sqlite3.connect`` hands out during the test (the real connections,
kept alive by the record, so a leaked one cannot be closed behind our back by the
garbage collector) and ask each, after the store is closed, whether it is still open.

Before the store rewrite (one store core over connectors, issue 17) every ``open()``
leaked one connection, a failed open leaked one per retry, and an operation overtaken by
``close()`` reopened the database behind it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from orchestrator.domain import Job, JobOptions, PersistenceError, TraceContext
from orchestrator.stores.sqlite import SQLiteJobStore

pytestmark = pytest.mark.anyio


class Connections:
    """Every connection opened while the test runs, except the test's own."""

    def __init__(self) -> None:
        self.opened: list[sqlite3.Connection] = []
        self.own: list[sqlite3.Connection] = []

    def still_open(self) -> list[sqlite3.Connection]:
        return [c for c in self.opened if c not in self.own and _is_open(c)]


def _is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError as exc:
        if "closed" in str(exc):
            return False
        raise
    return True


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connections]:
    record = Connections()
    real_connect = sqlite3.connect

    def recording_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        record.opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    try:
        yield record
    finally:
        for conn in record.opened:  # whatever the store leaked, this test leaks nothing
            conn.close()


def new_job(source: Path) -> Job:
    return Job.new(
        project_id="connections",
        source=str(source),
        modules=("inventory",),
        options=JobOptions(),
        trace=TraceContext.new(),
    )


async def test_open_use_and_close_leaves_no_connection_open(tmp_path: Path, connections: Connections) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    await store.open()
    job = new_job(tmp_path)
    await store.insert(job)
    assert (await store.get(job.id)).id == job.id
    await store.close()

    assert connections.opened, "the store opened no connection through sqlite3.connect"
    assert connections.still_open() == []


async def test_a_failed_open_closes_what_it_opened(tmp_path: Path, connections: Connections) -> None:
    # Another process holds an exclusive lock on a database not yet in WAL mode: the store
    # connects, but cannot switch the journal mode; every retry connects again.
    path = tmp_path / "jobs.db"
    holder = sqlite3.connect(path, isolation_level=None)
    connections.own.append(holder)
    holder.execute("BEGIN EXCLUSIVE")
    store = SQLiteJobStore(path, busy_timeout=0.05, lock_retries=2)
    try:
        with pytest.raises(PersistenceError):
            await store.open()
    finally:
        holder.execute("ROLLBACK")
    await store.close()

    assert connections.opened, "the store opened no connection through sqlite3.connect"
    assert connections.still_open() == []


async def test_an_operation_overtaken_by_close_opens_no_new_connection(
    tmp_path: Path, connections: Connections
) -> None:
    # A write waits for another process's lock when the store is closed under it (a worker
    # shutting down): it must fail as closed, not reopen the database behind close().
    path = tmp_path / "jobs.db"
    store = SQLiteJobStore(path, busy_timeout=0.0, lock_retries=8)  # busy: fail at once, retry
    await store.open()
    holder = sqlite3.connect(path, isolation_level=None)
    connections.own.append(holder)
    holder.execute("BEGIN IMMEDIATE")
    outcome: list[BaseException | None] = []

    async def insert() -> None:
        try:
            await store.insert(new_job(tmp_path))
        except PersistenceError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(insert)
        await wait_all_tasks_blocked()  # the insert is waiting for the lock (or between retries)
        await store.close()
        holder.execute("ROLLBACK")  # the lock is free: a reopened store would now succeed

    assert len(outcome) == 1
    assert isinstance(outcome[0], PersistenceError), "a write succeeded on a closed store"
    assert connections.still_open() == []


async def test_an_sqlite_library_too_old_for_the_store_is_refused_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's statements need RETURNING (3.35) and UPDATE ... FROM (3.33): an older
    library is refused at open, naming both versions, before anything is created."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    store = SQLiteJobStore(tmp_path / "data" / "jobs.db")
    with pytest.raises(PersistenceError) as refused:
        await store.open()
    assert "SQLite 3.34.1 is too old for the sqlite store" in str(refused.value)
    assert "3.35.0 or newer" in str(refused.value)
    assert not (tmp_path / "data").exists()

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 0))
    await store.open()  # the oldest it takes
    await store.close()
