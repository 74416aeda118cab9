"""Loads named SQL blocks and versioned migrations shipped with the package."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from orchestrator.domain import PersistenceError

__all__ = ["Migration", "SchemaOutdated", "migrations", "queries"]

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@functools.cache
def queries(dialect: str) -> dict[str, str]:
    """The named queries of ``queries/<dialect>.sql`` (blocks headed ``-- name: x``)."""
    text = resources.files("orchestrator.stores").joinpath("queries", f"{dialect}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


class SchemaOutdated(PersistenceError):
    """The database schema is older than this release and migrations are off."""

    def __init__(self, target: str, pending: list[str]) -> None:
        super().__init__(
            f"the schema of {target} lacks migrations {', '.join(pending)}: run `orchestrator db upgrade` "
            "(or start without --no-migrate)"
        )
        self.pending = pending


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """Versioned migrations ``migrations/<dialect>/NNNN_name.sql``, in order."""
    folder = resources.files("orchestrator.stores").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))
