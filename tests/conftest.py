"""Shared fixtures: the anyio backend, the PostgreSQL test server and the job stores."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestrator.stores.base import JobStore
from orchestrator.stores.postgres import PostgresJobStore, describe_target
from orchestrator.stores.sqlite import SQLiteJobStore

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (fails in CI) when it cannot be reached."""
    url = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL at {describe_target(url)} is not reachable: {str(exc).strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh, uniquely named schema, dropped with everything in it afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    """An opened store of each backend (PostgreSQL in a schema of its own)."""
    opened: JobStore
    if request.param == "sqlite":
        opened = SQLiteJobStore(tmp_path / "jobs.db")
    else:
        opened = PostgresJobStore(request.getfixturevalue("postgres_url"), schema=request.getfixturevalue("pg_schema"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- telemetry fixtures (tests/telemetry_helpers.py) -------------------------------------

from telemetry_helpers import TelemetryHarness, build_harness  # noqa: E402 - appended after the originals


@pytest.fixture
def harness() -> Iterator[TelemetryHarness]:
    """A JobTelemetry on in-memory SDK providers (spans and metrics readable by the test)."""
    built = build_harness()
    try:
        yield built
    finally:
        built.shutdown()


# -- the fault-injection suite (tests/faults/) --------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long variants of the fault-injection suite (tests/faults/): more jobs, longer chaos",
    )


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True under ``--soak``: the fault-injection tests run their long variants."""
    return bool(request.config.getoption("--soak"))


# -- suite shape: the slow files (issue 17) ------------------------------------------------

#: Files (or folders) whose tests run real subprocesses end to end: worker and CLI
#: processes, the demo, ``serve``, Prometheus, fuzzing. Every test in them is marked
#: ``slow``: ``make test`` (CI) runs everything, ``make test-fast`` (``-m 'not slow'``)
#: leaves them out. A file may also mark itself (``pytestmark = pytest.mark.slow``) or
#: single tests; tests/test_suite_shape.py checks that every path here still exists.
SLOW_PATHS: dict[str, str] = {
    "tests/faults": "fault injection: worker processes killed, database outages, collector faults",
    "tests/test_postgres_workers.py": "worker subprocesses on PostgreSQL",
    "tests/test_module_shutdown.py": "a worker subprocess stopped while a module blocks",
    "tests/test_cli.py": "the CLI in subprocesses",
    "tests/test_cli_run.py": "the CLI in subprocesses, Ctrl-C on a terminal",
    "tests/test_cli_usage.py": "the CLI in subprocesses",
    "tests/test_cli_report.py": "the CLI in subprocesses over a multi-process scenario",
    "tests/test_views.py": "the demo in a subprocess",
    "tests/test_otlp_export.py": "the demo in subprocesses exporting over OTLP",
    "tests/test_security.py": "serve in subprocesses, slow peers held to their deadlines",
    "tests/test_api_fuzz.py": "schemathesis fuzzing of the API",
    "tests/test_analysis_runtime.py": "analyzer worker processes started, killed and cancelled",
}
_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [(_ROOT / path) for path in SLOW_PATHS]
    for item in items:
        if any(item.path == p or p in item.path.parents for p in slow):
            item.add_marker(pytest.mark.slow)


# -- logging state is each test's own ------------------------------------------------------


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Put the logging configuration back after each test: some libraries configure logging
    when a test runs them in process (import-linter's ``lint_imports`` applies a dictConfig
    that disables every existing logger), and later tests would silently capture nothing."""
    root = logging.getLogger()
    saved_root_level = root.level  # (handlers are pytest's own business, per test phase)
    saved = {
        name: (logger.disabled, logger.level, logger.propagate)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.setLevel(saved_root_level)
    for name, (disabled, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.disabled, logger.propagate = disabled, propagate
        logger.setLevel(level)
