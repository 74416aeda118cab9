"""The store's structure: one core over thin connectors, SQL in named blocks.

The dialect files define the same query names (those starting with ``_`` belong to one
connector alone), none of them redefines a common query, and every name the store core
(and the webhook store, which runs on the same connectors) calls exists in both
dialects. Names are read from the files and the Python sources here, independently of
:mod:`orchestrator.stores.sql`, whose own reading is then checked against them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from orchestrator.stores import sql

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
QUERIES = PACKAGE / "stores" / "queries"
DIALECTS = ("sqlite", "postgres")
#: The modules that run named queries through a connector (the port's users).
CALLERS = (PACKAGE / "stores" / "core.py", PACKAGE / "webhooks" / "store.py")
#: Each connector, and the dialect whose private names it may use.
CONNECTORS = {"sqlite": PACKAGE / "stores" / "sqlite.py", "postgres": PACKAGE / "stores" / "postgres.py"}
_CONNECTOR_METHODS = {"execute", "fetchone", "fetchall"}
_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _defined(filename: str) -> list[str]:
    """Every ``-- name:`` header of a query file, in order, repeats included."""
    return _HEADER.findall((QUERIES / filename).read_text("utf-8"))


def _names_called(path: Path) -> set[str]:
    """Query names a module hands a connector: the first argument of ``.execute``,
    ``.fetchone`` and ``.fetchall``, and the name of each ``(name, params)`` pair of a batch."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CONNECTOR_METHODS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
        elif (
            isinstance(node, ast.Tuple)
            and len(node.elts) == 2
            and isinstance(node.elts[0], ast.Constant)
            and isinstance(node.elts[0].value, str)
            and re.fullmatch(r"\w+", node.elts[0].value)
        ):
            names.add(node.elts[0].value)
    return names


def _private_names_used(path: Path) -> set[str]:
    """``_Q["_name"]``: the private queries a connector runs itself."""
    return {
        node.slice.value
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
        and node.slice.value.startswith("_")
    }


def _public(names: set[str] | frozenset[str]) -> set[str]:
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("filename", ["common.sql", *(f"{d}.sql" for d in DIALECTS)])
def test_a_query_file_defines_each_name_once(filename: str) -> None:
    names = _defined(filename)
    assert names, f"{filename} defines no query"
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_the_module_reads_the_names_the_files_define() -> None:
    common = set(_defined("common.sql"))
    for dialect in DIALECTS:
        own = set(_defined(f"{dialect}.sql"))
        assert sql.dialect_names(dialect) == own
        assert set(sql.queries(dialect)) == common | own
        assert all(sql.queries(dialect)[name].strip() for name in common | own), "an empty query block"


def test_both_dialects_define_the_same_query_names() -> None:
    sqlite, postgres = (_public(set(_defined(f"{d}.sql"))) for d in DIALECTS)
    assert sqlite - postgres == set(), "defined for sqlite only"
    assert postgres - sqlite == set(), "defined for postgres only"


def test_no_dialect_redefines_a_common_query() -> None:
    common = set(_defined("common.sql"))
    for dialect in DIALECTS:
        assert common & set(_defined(f"{dialect}.sql")) == set(), f"{dialect}.sql redefines a common query"


def test_private_names_are_the_connectors_own() -> None:
    """``_``-names are never common, never called by the core, and each connector runs
    only its own dialect's."""
    assert {n for n in _defined("common.sql") if n.startswith("_")} == set()
    for dialect, connector in CONNECTORS.items():
        used = _private_names_used(connector)
        assert used <= set(_defined(f"{dialect}.sql")), f"{connector.name} runs undefined private queries"
    for caller in CALLERS:
        assert {n for n in _names_called(caller) if n.startswith("_")} == set(), caller.name


def test_every_query_the_core_calls_exists_in_both_dialects() -> None:
    called = set().union(*(_names_called(c) for c in CALLERS))
    # The extraction finds what it must (a check that the parse above sees the calls).
    assert {"apply_transition", "insert_job", "claim", "history", "migration_lock", "webhook_claim"} <= called
    for dialect in DIALECTS:
        missing = called - set(sql.queries(dialect))
        assert missing == set(), f"{dialect} lacks {sorted(missing)}"


def test_every_public_query_has_a_caller() -> None:
    """A query nobody runs is dead SQL that two dialects must keep in step."""
    called = set().union(*(_names_called(c) for c in CALLERS))
    defined = _public(set(_defined("common.sql")) | set(_defined("sqlite.sql")))
    assert defined - called == set()


def test_only_the_callers_run_named_queries() -> None:
    """Any other module holding a connector would be store logic outside the core."""
    holders = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "orchestrator.stores.connector"
                and {"Connector", "Transaction"} & {alias.name for alias in node.names}
            ):
                holders.add(path)
    assert holders - set(CONNECTORS.values()) == set(CALLERS)


#: Full scans a SQLite write statement may make: of its own derived tables (a job's
#: history as JSON, a claim's chosen candidates) and of the emitters' table (one row per
#: process that emitted root spans recently).
_ALLOWED_SCANS = {"SCAN h", "SCAN oldest", "SCAN due", "SCAN trace_emitters", "SCAN e"}


@pytest.mark.anyio
async def test_no_sqlite_write_statement_scans_a_whole_table(tmp_path: Path) -> None:
    """A write holds SQLite's one write lock, which every worker's write waits for: none
    may read a whole table of jobs, history or deliveries. The store never runs ANALYZE,
    so this is the plan SQLite really picks (on an empty, freshly migrated store, as on
    a full one: without statistics the plan does not depend on the data)."""
    import sqlite3

    from orchestrator.stores.sqlite import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "jobs.db")
    await store.open()
    await store.close()
    placeholder = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        scans: dict[str, list[str]] = {}
        checked = 0
        for name, query in sorted(sql.queries("sqlite").items()):
            if name.startswith("_") or re.match(r"\s*SELECT\b", query, re.IGNORECASE):
                continue
            params = dict.fromkeys(placeholder.findall(query))
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
            checked += 1
            found = [
                step
                for step in plan
                if step.startswith("SCAN ")
                and step not in _ALLOWED_SCANS
                and not step.startswith(("SCAN CONSTANT ROW", "SCAN json_each"))
            ]
            if found:
                scans[name] = found
    finally:
        conn.close()
    assert checked >= 15  # the write statements were found
    assert scans == {}


@pytest.mark.anyio
async def test_listing_jobs_on_sqlite_walks_an_index_from_the_page_bound(tmp_path: Path) -> None:
    """A page of jobs (`orchestrator list`, GET /v1/jobs, the report's paging) starts at
    its bound in an index led by its filter: listing the few failed jobs among many
    completed ones, or the thousandth page, reads about a page, not the table."""
    import sqlite3

    from orchestrator.stores.sqlite import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "jobs.db")
    await store.open()
    await store.close()
    queries = sql.queries("sqlite")
    none = {
        "status": None,
        "project_id": None,
        "error_category": None,
        "since_ns": None,
        "since_id": "",
        "after": None,
        "limit": 100,
    }
    # A page of the jobs created since a moment is bounded below by that moment's id.
    since = {"since_ns": 1_764_000_000_000_000_000, "since_id": "019abb49-d000"}
    expected = [
        ("list_jobs", {**none, "after": "0190"}, "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id>? AND id<?)"),
        ("list_jobs", {**none, **since}, "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id>? AND id<?)"),
        (
            "list_jobs_by_status",
            {**none, "status": "failed"},
            "SEARCH jobs USING INDEX jobs_status (status=? AND id>? AND id<?)",
        ),
        (
            "list_jobs_by_project",
            {**none, "project_id": "p", "status": "failed", "after": "0190"},
            "SEARCH jobs USING INDEX jobs_project (project_id=? AND id>? AND id<?)",
        ),
        (
            "list_jobs_by_error_category",
            {**none, **since, "error_category": "persistence", "status": "failed"},
            "SEARCH jobs USING INDEX jobs_error_category (error_category=? AND id>? AND id<?)",
        ),
    ]
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        for name, params, step in expected:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {queries[name]}", params)]
            assert plan[0] == step, (name, plan)
            assert not [s for s in plan if s.startswith("SCAN") or "TEMP B-TREE" in s], (name, plan)
    finally:
        conn.close()


@pytest.mark.anyio
async def test_listing_deliveries_on_sqlite_reads_the_latest_from_an_index(tmp_path: Path) -> None:
    """A job's or a subscription's deliveries (GET .../deliveries, `webhooks deliveries`)
    are read back from the end of an index led by the filter: the outbox of a busy
    subscription is neither scanned nor sorted, only the page is."""
    import sqlite3

    from orchestrator.stores.sqlite import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "jobs.db")
    await store.open()
    await store.close()
    queries = sql.queries("sqlite")
    none = {"job_id": None, "subscription_id": None, "limit": 100, "before": None}
    expected = [
        ("webhook_list_deliveries", none, "SEARCH webhook_deliveries USING INTEGER PRIMARY KEY (rowid<?)"),
        (
            "webhook_list_deliveries_by_job",
            {**none, "job_id": "j"},
            "SEARCH webhook_deliveries USING INDEX webhook_deliveries_job (job_id=? AND rowid<?)",
        ),
        (
            "webhook_list_deliveries_by_job",
            {**none, "job_id": "j", "subscription_id": "s", "before": 7},
            "SEARCH webhook_deliveries USING INDEX webhook_deliveries_job (job_id=? AND rowid<?)",
        ),
        (
            "webhook_list_deliveries_by_subscription",
            {**none, "subscription_id": "s", "before": 7},
            "SEARCH webhook_deliveries USING INDEX webhook_deliveries_subscription (subscription_id=? AND seq<?)",
        ),
    ]
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        for name, params, step in expected:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {queries[name]}", params)]
            # The inner read walks the index in order (no sort); only the page is sorted.
            assert plan == ["CO-ROUTINE latest", step, "SCAN latest", "USE TEMP B-TREE FOR ORDER BY"], (name, plan)
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_listings_on_postgresql_can_be_served_by_their_index(postgres_url: str, pg_schema: str) -> None:
    """The same listings on PostgreSQL, planned as a prepared statement's generic plan
    (the plan psycopg's prepared statements end up with): each is served by its index,
    the page's bounds in the index condition. Sequential scans are priced out so that an
    empty table's cheapest plan does not hide a query no index can serve."""
    import psycopg
    from psycopg import sql as pgsql

    from orchestrator.stores.postgres import PostgresJobStore

    store = PostgresJobStore(postgres_url, schema=pg_schema)
    await store.open()
    await store.close()
    queries = sql.queries("postgres")
    jobs = {"status": None, "project_id": None, "error_category": None, "since_ns": None, "since_id": "", "after": None}
    deliveries = {"job_id": None, "subscription_id": None, "before": 7}
    cases = [
        ("list_jobs", {**jobs, "since_ns": 5, "since_id": "019a"}, "Index Scan Backward using jobs_pkey on jobs"),
        (
            "list_jobs_by_error_category",
            {**jobs, "error_category": "module"},
            "Index Scan Backward using jobs_error_category on jobs",
        ),
        (
            "webhook_list_deliveries_by_subscription",
            {**deliveries, "subscription_id": "s"},
            "Index Scan Backward using webhook_deliveries_subscription on webhook_deliveries",
        ),
        (
            "webhook_list_deliveries_by_job",
            {**deliveries, "job_id": "j"},
            "Index Scan using webhook_deliveries_job on webhook_deliveries",
        ),
    ]
    placeholder = re.compile(r"%\((\w+)\)s")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(pg_schema)))
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for i, (name, params, step) in enumerate(cases):
            names = list(dict.fromkeys(placeholder.findall(queries[name])))
            numbered = {n: f"${k}" for k, n in enumerate(names, start=1)}
            body = placeholder.sub(lambda m, numbered=numbered: numbered[m.group(1)], queries[name]).replace("%%", "%")
            conn.execute(f"PREPARE listing_{i} AS {body.strip().rstrip(';')}")
            values = {**params, "limit": 100}
            explain = pgsql.SQL("EXPLAIN EXECUTE {}({})").format(
                pgsql.Identifier(f"listing_{i}"), pgsql.SQL(", ").join(pgsql.Literal(values[n]) for n in names)
            )
            plan = [row[0] for row in conn.execute(explain)]
            assert any(step in line for line in plan), (name, plan)
            assert not [line for line in plan if "Seq Scan" in line], (name, plan)
            if name.startswith("list_jobs"):  # both bounds of the page are in the index condition
                assert any("Index Cond" in line and "id <" in line and "id >=" in line for line in plan), plan
            elif name.endswith("by_subscription"):  # a job's few deliveries are filtered
                assert any("Index Cond" in line and "seq <" in line for line in plan), plan
