"""The ``Connector`` port: what the store core needs of a database, and nothing more.

A connector runs the named queries of its dialect (``queries/*.sql``), one at a time or
several as one atomic batch, opens a transaction for migrations, and waits for the
notification that work may be claimable. It maps its driver's errors to
:class:`~orchestrator.domain.PersistenceError` (logged once, where they happen, without
data content) and a refused transition to :class:`TransitionRefused`. The store logic
itself is written once, in :mod:`orchestrator.stores.core`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

from orchestrator.domain import ErrorCategory, PersistenceError
from orchestrator.domain.errors import new_error_id

__all__ = [
    "UNDECODABLE",
    "Connector",
    "JSONText",
    "Params",
    "Row",
    "Transaction",
    "TransitionRefused",
    "new_error_id",
]

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
Params = Mapping[str, Any]
#: The row key under which a connector names the columns whose stored text was not valid
#: UTF-8 (written by something else than this program): read with U+FFFD in their place.
UNDECODABLE: Final = "_undecodable"


class JSONText(str):
    """Canonical JSON text bound to a JSON column (TEXT on SQLite, jsonb on PostgreSQL)."""

    __slots__ = ()


class TransitionRefused(PersistenceError):
    """The database refused a status change its transition table does not allow."""

    category = ErrorCategory.TRANSITION


class Transaction(Protocol):
    """Named queries inside one transaction (migrations)."""

    async def execute(self, name: str, params: Params | None = None) -> None: ...

    async def fetchall(self, name: str, params: Params | None = None) -> list[Row]: ...

    async def execute_script(self, script: str) -> None:
        """Run a migration script (several statements) inside the transaction."""


class Connector(Protocol):
    #: "sqlite" or "postgres": which query files it runs.
    dialect: str
    #: Where the data is, as logs and errors may show it (a path, or host:port/dbname).
    target: str

    async def open(self) -> None:
        """Connect (fail fast with :class:`PersistenceError` when impossible)."""

    async def close(self) -> None: ...

    async def fetchone(self, name: str, params: Params | None = None) -> Row | None:
        """The first row of one named query, run as its own transaction."""

    async def fetchall(self, name: str, params: Params | None = None, *, deadline: float | None = None) -> list[Row]:
        """Every row of one named query, run as its own transaction. ``deadline``: seconds
        after which the statement is cancelled where the database can be asked to (a
        :class:`PersistenceError` then says whether it was written); ignored where the
        connector's own waits are bounded (SQLite's busy timeout)."""

    async def batch(self, calls: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        """Several named queries in one transaction and, where the driver can, one round
        trip; the rows of each, in order."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction holding the store's write lock (migrations)."""

    async def wait_for_notification(self, *, max_wait: float) -> None:
        """Return when another process (or this one) made work claimable, or after
        ``max_wait`` seconds."""

    def wake_local(self) -> None:
        """Wake this process's waiters (work was made claimable here)."""
