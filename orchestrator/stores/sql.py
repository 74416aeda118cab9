"""Named SQL blocks and versioned migrations shipped with the package.

Queries live in ``queries/common.sql`` (both dialects run them as written) and in one
file per dialect (``queries/sqlite.sql``, ``queries/postgres.sql``) for those that
differ. Every block is headed ``-- name: <name>``, or ``-- fragment: <name>`` for a piece
that queries take as ``{{name}}`` (a dialect's own, or one several common queries share);
names starting with ``_`` belong to a connector alone. Placeholders are written
``:name``; for PostgreSQL they become psycopg's ``%(name)s`` (and a literal ``%`` becomes
``%%``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from orchestrator.domain import PersistenceError

__all__ = ["DIALECTS", "Migration", "SchemaOutdated", "dialect_names", "migrations", "queries"]

DIALECTS: Final = ("sqlite", "postgres")

_NAME = re.compile(r"^--\s*(name|fragment):\s*(\w+)\s*$", re.MULTILINE)
#: Where a common query takes a dialect's fragment: ``{{name}}``.
_FRAGMENT = re.compile(r"\{\{(\w+)\}\}")
#: ``:name`` but not a ``::type`` cast.
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _parts(filename: str) -> tuple[dict[str, str], dict[str, str]]:
    """The named queries and the fragments of one file."""
    text = resources.files("orchestrator.stores").joinpath("queries", filename).read_text("utf-8")
    parts = _NAME.split(text)
    found: dict[str, dict[str, str]] = {"name": {}, "fragment": {}}
    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        if name in found[kind]:
            raise ValueError(f"{filename}: {kind} {name!r} defined twice")
        # Comment lines are documentation; they would only get in the way of the driver.
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        found[kind][name] = "\n".join(lines).strip().rstrip(";")
    return found["name"], found["fragment"]


def _blocks(filename: str) -> dict[str, str]:
    return _parts(filename)[0]


def _psycopg(query: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", query.replace("%", "%%"))


@functools.cache
def dialect_names(dialect: str) -> frozenset[str]:
    """The names defined by the dialect's own file (for the structure test)."""
    return frozenset(_blocks(f"{dialect}.sql"))


@functools.cache
def queries(dialect: str) -> dict[str, str]:
    """Every named query of ``dialect``: the common ones and the dialect's own, in the
    dialect's placeholder style."""
    (common, shared), (own, fragments) = _parts("common.sql"), _parts(f"{dialect}.sql")
    twice = sorted(set(common) & set(own)) + sorted(set(shared) & set(fragments))
    if twice:
        raise ValueError(f"{dialect}.sql redefines common queries or fragments: {', '.join(twice)}")
    # A query may take a piece only a dialect can write (a JSON aggregate, an index hint),
    # or a piece several common queries share (common.sql's own fragments).
    pieces = {**shared, **fragments}
    merged = {name: _FRAGMENT.sub(lambda m: pieces[m[1]], query) for name, query in {**common, **own}.items()}
    if dialect == "postgres":
        return {name: _psycopg(query) for name, query in merged.items()}
    return merged


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
