"""Fixtures of the fault-injection suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_helpers import fresh_database

from faults.helpers import load_plugin_modules, write_plugin


@pytest.fixture(scope="session")
def fault_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault plugin (flaky, noop, unserialisable) with its entry points."""
    return write_plugin(tmp_path_factory.mktemp("fault-plugin"))


@pytest.fixture(scope="session")
def fault_plugin(fault_plugin_dir: Path) -> Any:
    return load_plugin_modules(fault_plugin_dir)


@pytest.fixture
def fault_db_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped WITH (FORCE) afterwards."""
    with fresh_database(postgres_url) as url:
        yield url
