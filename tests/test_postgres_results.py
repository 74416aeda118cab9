"""The PostgreSQL connector tells a statement that returned rows from one that did not
without building psycopg's column objects (``cursor.description``): checked against
``description`` itself on the real server, for every kind of result the store meets."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from orchestrator.stores.postgres import _has_rows

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

STATEMENTS = [
    ("SELECT 1 AS one", True),
    ("SELECT 1 AS one WHERE false", True),  # rows returned: none of them
    ("SELECT", True),  # a result with no columns is still a result
    ("UPDATE t SET v = v + 1", False),
    ("UPDATE t SET v = v + 1 RETURNING v", True),
    ("UPDATE t SET v = v + 1 WHERE false RETURNING v", True),
    ("DELETE FROM t WHERE false", False),
    ("SET application_name = 'orchestrator-test'", False),
    ("NOTIFY orchestrator_test", False),
]


@pytest.mark.parametrize(("statement", "returns_rows"), STATEMENTS)
async def test_rows_are_told_apart_as_description_tells_them(
    postgres_url: str, statement: str, returns_rows: bool
) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True, row_factory=dict_row) as conn:
        await conn.execute("CREATE TEMPORARY TABLE t (v integer)")
        await conn.execute("INSERT INTO t VALUES (1)")
        cur = await conn.execute(statement)  # type: ignore[call-overload]
        assert (cur.description is not None) is returns_rows  # the expectation holds on this server
        assert _has_rows(cur) is returns_rows
        assert _has_rows(cur) is (cur.description is not None)
