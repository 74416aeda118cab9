"""A long-running worker keeps its open file descriptors flat (issue 19).

A real ``python -m orchestrator worker`` process runs a few hundred jobs on each store.
Its open descriptors (``/proc/<pid>/fd``) are counted when it is idle after a warm-up
batch, then again, idle, after several hundred more jobs. A connection, file or socket
leaked per job (or per claim, heartbeat or poll) shows up as growth proportional to the
jobs run; the bound below allows none of that, only the connection pool's own slack.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from pg_helpers import Cluster, WorkerProc, fresh_database, load_plugin, write_plugin
from pydantic import SecretStr

from orchestrator.bootstrap import App, open_app
from orchestrator.domain import JobStatus
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors through /proc/<pid>/fd"),
]

WARM_UP_JOBS = 60
SOAK_JOBS = 300
CONCURRENCY = 4
#: Descriptors the worker may gain between the two idle points without leaking: on
#: PostgreSQL the pool may hold one or two more connections after a busier stretch
#: (min 2, max concurrency + 4 = 8); SQLite has one connection and fixed files.
SLACK = {"sqlite": 0, "postgres": 4}


@dataclass
class Backend:
    name: str
    cluster: Cluster
    settings: Settings


class SQLiteCluster(Cluster):
    """Worker subprocesses on the embedded default: one SQLite file in the worker's data dir."""

    def env(self, name: str, **settings: object) -> dict[str, str]:
        env = super().env(name, **settings)
        del env["ORCHESTRATOR_DATABASE_URL"]
        return env


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin (``noop``, ``sleepy``) behind a real ``orchestrator.modules`` entry point."""
    return write_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def plugin(plugin_dir: Path) -> ModuleType:
    return load_plugin(plugin_dir)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, plugin_dir: Path) -> Iterator[Backend]:
    """The worker's cluster and the settings an in-process submitter uses to reach the same store."""
    if request.param == "sqlite":
        sqlite_cluster = SQLiteCluster(tmp_path, "", plugin_dir)
        settings = Settings(data_dir=sqlite_cluster.data_dir("soak"), load_entry_points=False)
        try:
            yield Backend("sqlite", sqlite_cluster, settings)
        finally:
            sqlite_cluster.close()
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as db_url:
        pg_cluster = Cluster(tmp_path, db_url, plugin_dir)
        settings = Settings(database_url=SecretStr(db_url), data_dir=tmp_path / "submitter", load_entry_points=False)
        try:
            yield Backend("postgres", pg_cluster, settings)
        finally:
            pg_cluster.close()


def open_fds(pid: int) -> dict[int, str]:
    """The process's open descriptors and what each points at (``socket:[…]``, a path, …)."""
    found = {}
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            found[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:  # closed between listing and reading: not open
            continue
    return found


def kinds(fds: dict[int, str]) -> Counter[str]:
    """Descriptors by kind: ``socket``, ``pipe``, ``anon_inode:[eventfd]``, or the file's path."""
    return Counter(target.split(":[", 1)[0] if ":[" in target else target for target in fds.values())


async def run_batch(app: App, worker: WorkerProc, count: int, source: Path, *, done_before: int) -> None:
    """Create ``count`` noop jobs and wait until the worker has completed all of them."""
    request: dict[str, Any] = {"project_id": "fd-soak", "source": str(source), "modules": ["noop"]}
    for _ in range(count):
        await app.create.execute(request)
    expected = done_before + count
    deadline = time.monotonic() + 180
    while True:
        assert worker.alive(), worker.describe()
        done = await app.store.list_jobs(status=JobStatus.COMPLETED, limit=expected + 1)
        if len(done) == expected:
            return
        assert time.monotonic() < deadline, f"{len(done)} of {expected} jobs completed after 180 s"
        await anyio.sleep(0.05)


async def idle_fds(app: App, worker: WorkerProc) -> dict[int, str]:
    """The worker's descriptors once it holds no job (the queue is empty and nothing runs)."""
    assert await app.store.queue_depth() == 0
    running = await app.store.list_jobs(status=JobStatus.RUNNING, limit=1)
    assert running == [], "the worker still runs a job"
    # An idle worker still polls, reaps and exports telemetry, each of which may hold a
    # descriptor for a moment: the fewest of a few looks is what it keeps open.
    looks = []
    for _ in range(5):
        looks.append(open_fds(worker.pid))
        await anyio.sleep(0.05)
    return min(looks, key=len)


@pytest.mark.anyio
async def test_a_long_running_worker_keeps_its_open_descriptors_flat(
    backend: Backend, plugin: ModuleType, tmp_path: Path
) -> None:
    source = tmp_path / "project"
    source.mkdir()
    (source / "main.py").write_text("print('hello')\n")
    worker = backend.cluster.start_worker(
        "soak", concurrency=CONCURRENCY, poll_seconds=0.05, reap_seconds=0.5, cancel_poll_seconds=0.1
    )
    telemetry = JobTelemetry(NoOpTracerProvider(), NoOpMeterProvider())
    registry = ModuleRegistry([plugin.Noop()])
    async with open_app(backend.settings, registry=registry, telemetry=telemetry) as app:
        await run_batch(app, worker, WARM_UP_JOBS, source, done_before=0)
        before = await idle_fds(app, worker)
        await run_batch(app, worker, SOAK_JOBS, source, done_before=WARM_UP_JOBS)
        after = await idle_fds(app, worker)

    grown = kinds(after) - kinds(before)
    assert len(after) - len(before) <= SLACK[backend.name], (
        f"{backend.name} worker: {len(before)} descriptors after {WARM_UP_JOBS} jobs, {len(after)} after "
        f"{SOAK_JOBS} more; new: {dict(grown)}"
    )
    # Files (the database, its WAL, telemetry files) never grow in number, on either store.
    assert not {k: n for k, n in grown.items() if k.startswith("/")}, f"files opened and kept: {dict(grown)}"
    assert worker.alive(), worker.describe()
    worker.terminate()
    assert worker.wait(30) == 0, worker.describe()
