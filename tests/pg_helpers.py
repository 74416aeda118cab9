"""Helpers of the multi-process PostgreSQL tests (tests/test_postgres_workers.py).

* a fresh database per test (created and dropped WITH (FORCE) through psycopg);
* a test plugin installed through a real ``orchestrator.modules`` entry point
  (a package plus a ``.dist-info`` folder on the subprocesses' PYTHONPATH);
* real ``python -m orchestrator worker`` subprocesses, each with its own data dir
  (so each writes its own telemetry files), killed for sure at teardown;
* synchronous reads of the database, and polling with a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orchestrator.cli.views import Span, load_spans

T = TypeVar("T")

PLUGIN_PACKAGE = "orch_test_modules"

PLUGIN_SOURCE = '''\
"""Controllable analysis modules for the multi-process tests (loaded by entry point)."""

import os

import anyio

from orchestrator import BaseModule


class Sleepy(BaseModule):
    """Sleeps options["seconds"]; with options["until_attempt"] = N, only on attempts <= N."""

    name = "sleepy"
    expected_runtime = 60.0
    timeout = 120.0
    description = "sleeps context.options['seconds'] (test module)"

    async def run(self, context):
        # Tells the test it started: a marker in its worker's data dir, per job and attempt.
        marker = os.path.join(os.environ["ORCHESTRATOR_DATA_DIR"], f"started-{context.job_id}-{context.attempt}")
        open(marker, "w").close()
        seconds = float(context.options.get("seconds", 0))
        until = context.options.get("until_attempt")
        if until is not None and context.attempt > int(until):
            seconds = 0.0
        await anyio.sleep(seconds)
        return {"pid": os.getpid(), "attempt": context.attempt, "slept": seconds}


class Noop(BaseModule):
    """Returns at once."""

    name = "noop"
    expected_runtime = 1.0
    timeout = 30.0
    description = "does nothing (test module)"

    async def run(self, context):
        return {"pid": os.getpid(), "attempt": context.attempt}
'''

PLUGIN_METADATA = "Metadata-Version: 2.1\nName: orch-test-modules\nVersion: 0.0\n"
PLUGIN_ENTRY_POINTS = "[orchestrator.modules]\nsleepy = orch_test_modules:Sleepy\nnoop = orch_test_modules:Noop\n"


def write_plugin(root: Path) -> Path:
    """Write the test plugin (package + dist-info with entry points) under ``root``."""
    package = root / PLUGIN_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    dist_info = root / f"{PLUGIN_PACKAGE}-0.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(PLUGIN_METADATA)
    (dist_info / "entry_points.txt").write_text(PLUGIN_ENTRY_POINTS)
    return root


def load_plugin(root: Path) -> ModuleType:
    """Import the plugin in this process without putting it on sys.path (other tests
    load entry points and must not see it)."""
    spec = importlib.util.spec_from_file_location(
        f"_{PLUGIN_PACKAGE}_{uuid.uuid4().hex[:8]}", root / PLUGIN_PACKAGE / "__init__.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- databases ------------------------------------------------------------------------


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead of its own."""
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database ``orch_<random>``; dropped WITH (FORCE) afterwards."""
    name = f"orch_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def query(url: str, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(statement, params).fetchall()


def job_row(url: str, job_id: str) -> dict[str, Any] | None:
    found = query(url, "SELECT * FROM jobs WHERE id = %(id)s", {"id": job_id})
    return found[0] if found else None


def history_rows(url: str, job_id: str) -> list[dict[str, Any]]:
    return query(url, "SELECT * FROM job_history WHERE job_id = %(id)s ORDER BY seq", {"id": job_id})


def wait_for(check: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


# -- worker subprocesses --------------------------------------------------------------


def subprocess_env(db_url: str, data_dir: Path, plugin_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of an ``orchestrator`` subprocess: our database, its own data dir,
    the plugin on PYTHONPATH, telemetry in files, ORCHESTRATOR_<NAME> for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["ORCHESTRATOR_DATABASE_URL"] = db_url
    env["ORCHESTRATOR_DATA_DIR"] = str(data_dir)
    env["ORCHESTRATOR_LOG_FORMAT"] = "json"
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export spans quickly
    for name, value in settings.items():
        env[f"ORCHESTRATOR_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProc:
    name: str
    popen: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def owns(self, lease_owner: str | None) -> bool:
        """Whether a worker id (``host:pid:random``) is this process's."""
        return lease_owner is not None and lease_owner.rsplit(":", 2)[-2:-1] == [str(self.pid)]

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        tail = "\n".join(self.output().splitlines()[-30:])
        return f"worker {self.name} (pid {self.pid}, rc {self.popen.poll()}), last output:\n{tail}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker has opened the store and started its loops."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"worker exited before it was ready: {self.describe()}")
            return "worker started" in self.output()

        wait_for(ready, timeout=timeout, interval=0.05, what=f"worker {self.name} to start")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap the process."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self) -> None:
        self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s: {self.describe()}") from None

    def spans(self) -> list[Span]:
        return list(load_spans(self.data_dir / "telemetry"))


@dataclass
class Cluster:
    """Starts worker subprocesses on one database; kills whatever is left at close."""

    root: Path
    db_url: str
    plugin_dir: Path
    workers: list[WorkerProc] = field(default_factory=list)

    def data_dir(self, name: str) -> Path:
        return self.root / f"data-{name}"

    def env(self, name: str, **settings: object) -> dict[str, str]:
        return subprocess_env(self.db_url, self.data_dir(name), self.plugin_dir, **settings)

    def start_worker(
        self, name: str, settings: Mapping[str, object] | None = None, *, ready: bool = True, **more: object
    ) -> WorkerProc:
        """``python -m orchestrator worker`` with ORCHESTRATOR_<NAME> for ``settings`` and ``more``;
        waits until it runs unless ``ready=False``."""
        data_dir = self.data_dir(name)
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"worker-{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "worker"],
                cwd=self.root,
                env=self.env(name, **{**(settings or {}), **more}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(name, popen, data_dir, log_path)
        self.workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """One ``python -m orchestrator ...`` command against the database."""
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=self.root,
            env=self.env("cli"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spans(self, workers: Iterable[WorkerProc] | None = None) -> list[Span]:
        return [s for w in (self.workers if workers is None else workers) for s in w.spans()]

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignorable
                worker.popen.wait(timeout=10)
