"""Shared machinery of the benchmark runner: subprocesses (workers, sink, peers), targets
(a fresh PostgreSQL database or a SQLite data dir), telemetry modes, our producer and
round timing, RSS sampling and summary statistics."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import psycopg
from opentelemetry import metrics, trace

from benchmarks.modules import registry
from benchmarks.pg import fresh_database
from orchestrator import __version__
from orchestrator.bootstrap import open_app
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from otel.logs import LOGGER_NAMES
from otel.setup import Telemetry, setup_telemetry

__all__ = [
    "MODES",
    "WORKER_ENV",
    "Measure",
    "Proc",
    "ProducerTelemetry",
    "RoundResult",
    "RssSampler",
    "ServerCpu",
    "Target",
    "clean_env",
    "cpu_delta",
    "cpu_seconds",
    "interrupt_on_sigterm",
    "ours_round",
    "parse_worker_env",
    "percentile",
    "postgres_target",
    "sqlite_target",
    "start_workers",
    "summary",
    "telemetry_env",
]

Mode = Literal["disabled", "otlp", "files"]
#: Settings every worker of this run gets on top of the scenario's (``--worker-env``).
WORKER_ENV: dict[str, str] = {}
MODES: tuple[Mode, ...] = ("disabled", "otlp", "files")
ROOT = Path(__file__).resolve().parent.parent
#: The tree every job analyses (one small file: see its README).
SOURCE = ROOT / "benchmarks" / "source"


# -- processes ----------------------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any OTEL_* / ORCHESTRATOR_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class Proc:
    """A subprocess that announces itself with one stdout line (``ready ...``, ``port N``)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.stderr"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, text=True
        )
        self.pid = self.popen.pid

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.popen.stdout], [], [], 0.1)
            if ready:
                line = self.popen.stdout.readline()
                if line.startswith(prefix):
                    return line.strip()
                if not line and self.popen.poll() is not None:
                    break
            elif self.popen.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not print {prefix!r} (exit {self.popen.poll()}); see {self.log_path}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> str:
        """SIGTERM, wait (kill after ``timeout``); returns what is left on stdout."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, _ = self.popen.communicate()
        self._log.close()
        return out or ""


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                if proc.alive():
                    proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()


def interrupt_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) ends a benchmark as Ctrl-C does, so its workers,
    sink and databases are stopped and dropped on the way out instead of left running."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def parse_worker_env(pairs: Sequence[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("ORCHESTRATOR_"):
            raise SystemExit(f"--worker-env takes ORCHESTRATOR_NAME=VALUE, not {pair!r}")
        found[name] = value
    return found


# -- telemetry modes ----------------------------------------------------------------------


def telemetry_env(mode: Mode, endpoint: str | None) -> dict[str, str]:
    """OTEL_* variables of a mode, and the level of the project's loggers: lifecycle and
    module records (info) are exported when telemetry is on; with it off none is built."""
    if mode == "disabled":
        return {"OTEL_SDK_DISABLED": "true", "ORCHESTRATOR_LOG_LEVEL": "warning"}
    env = {"ORCHESTRATOR_LOG_LEVEL": "info"}
    if mode == "otlp":
        assert endpoint is not None
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    return env


class ProducerTelemetry:
    """The benchmark process's own telemetry for one round, configured like a worker's
    (same mode, same variables), and torn down afterwards so the next round starts clean."""

    def __init__(self, mode: Mode, endpoint: str | None, telemetry_dir: Path) -> None:
        self.mode = mode
        env = telemetry_env(mode, endpoint)
        if mode == "disabled":
            self.telemetry = Telemetry(mode="disabled")
            self.job = JobTelemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), None)
        else:
            # The OTLP exporters read their endpoint from os.environ when they are built.
            with _environ({k: v for k, v in env.items() if k.startswith("OTEL_")}):
                self.telemetry = setup_telemetry(service_version=__version__, telemetry_dir=telemetry_dir, env=env)
            t = self.telemetry
            self.job = JobTelemetry(t.tracer_provider, t.meter_provider, t.sampler)
        level = getattr(logging, env["ORCHESTRATOR_LOG_LEVEL"].upper())
        for name in LOGGER_NAMES:
            if name != "benchmarks":
                logging.getLogger(name).setLevel(level)

    def close(self) -> None:
        self.telemetry.shutdown(timeout_s=5.0)
        if self.mode != "disabled":
            from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor

            instrumentor = AsyncioInstrumentor()
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        for name in LOGGER_NAMES:
            if name != "benchmarks":
                logging.getLogger(name).setLevel(logging.WARNING)

    def __enter__(self) -> ProducerTelemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- targets ------------------------------------------------------------------------------


@dataclass
class Target:
    backend: Literal["postgresql", "sqlite"]
    workdir: Path
    url: str | None = None
    #: Seconds between claim polls of workers (SQLite has no cross-process wake-up).
    poll_seconds: float = 1.0
    _workers: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def worker_env(self, **extra: str) -> dict[str, str]:
        """ORCHESTRATOR_* of one worker; PostgreSQL workers get a data dir each (their
        telemetry files), SQLite workers share the database's."""
        self._workers += 1
        data_dir = self.data_dir if self.backend == "sqlite" else self.workdir / f"worker-{self._workers}"
        env = {
            "ORCHESTRATOR_DATA_DIR": str(data_dir),
            "ORCHESTRATOR_POLL_SECONDS": str(self.poll_seconds),
            "ORCHESTRATOR_WEBHOOKS": "false",
        }
        env.update(WORKER_ENV)
        if self.url:
            env["ORCHESTRATOR_DATABASE_URL"] = self.url
        env.update(extra)
        return env

    def settings(self, *, pool: int = 8) -> Settings:
        kwargs: dict[str, Any] = {"data_dir": self.data_dir, "pg_pool_size": pool, "concurrency": pool}
        if self.url:
            kwargs["database_url"] = self.url
        return Settings(**kwargs)

    def prepare(self) -> None:
        """Apply the migrations once, before any worker starts."""

        async def go() -> None:
            async with open_app(self.settings(pool=2), registry=registry(), telemetry=_quiet_telemetry()):
                pass

        anyio.run(go)


def _quiet_telemetry() -> JobTelemetry:
    return JobTelemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), None)


@contextlib.contextmanager
def postgres_target(poll_seconds: float = 1.0) -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp, fresh_database() as url:
        target = Target("postgresql", Path(tmp), url=url, poll_seconds=poll_seconds)
        target.prepare()
        yield target


@contextlib.contextmanager
def sqlite_target(poll_seconds: float = 0.05) -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        target = Target("sqlite", Path(tmp), poll_seconds=poll_seconds)
        target.prepare()
        yield target


def start_workers(
    target: Target, count: int, *, concurrency: int, mode: Mode, endpoint: str | None, log_dir: Path, tag: str
) -> list[Proc]:
    procs = []
    try:
        for i in range(count):
            env = clean_env(
                {
                    **target.worker_env(ORCHESTRATOR_CONCURRENCY=str(concurrency)),
                    **telemetry_env(mode, endpoint),
                }
            )
            procs.append(Proc(f"{tag}-worker{i}", python_m("benchmarks.worker"), env, log_dir))
        for proc in procs:
            proc.wait_line("ready")
    except BaseException:
        for proc in procs:
            proc.stop(timeout=5)
        raise
    return procs


# -- rounds -------------------------------------------------------------------------------


@dataclass
class RoundResult:
    jobs: int
    seconds: float
    produce_seconds: float
    failed: int = 0
    #: CPU seconds (user + system, all threads) the worker processes used during the round.
    worker_cpu: float = 0.0
    #: CPU seconds this (the producing) process used during the round.
    producer_cpu: float = 0.0
    #: CPU seconds the PostgreSQL server used during the round (None: not measurable here).
    server_cpu: float | None = None

    @property
    def throughput(self) -> float:
        return self.jobs / self.seconds

    @property
    def worker_cpu_ms(self) -> float:
        """Worker CPU per job, in ms: robust where wall-clock throughput is not (a shared machine)."""
        return self.worker_cpu * 1000 / self.jobs

    @property
    def producer_cpu_ms(self) -> float:
        return self.producer_cpu * 1000 / self.jobs

    @property
    def server_cpu_ms(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu * 1000 / self.jobs


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


class ServerCpu:
    """CPU seconds a PostgreSQL server on this machine has used so far: its postmaster,
    every process it runs now (backends, WAL writer, checkpointer, autovacuum) and every
    one it has already reaped (the postmaster's children times), so a backend that came
    and went between two readings counts too. The postmaster is the parent of the
    backend serving a connection to ``url``; ``seconds()`` is None when the server is not
    a process of this machine (or /proc does not show it)."""

    def __init__(self, url: str) -> None:
        self.postmaster: int | None = None
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            # Read while the connection is open: its backend exits when it closes.
            fields = _stat(row[0]) if row is not None else None
        if fields is not None and _stat(int(fields[1])) is not None:
            self.postmaster = int(fields[1])

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        own = _stat(self.postmaster)
        if own is None:
            return None
        ticks = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
        parent = str(self.postmaster)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat(entry.name)
                if fields is not None and fields[1] == parent:
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / _TICKS


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


_DONE_SQL = (
    "SELECT COUNT(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')) AS done, "
    "COUNT(*) FILTER (WHERE status <> 'completed' AND status IN ('failed', 'cancelled')) AS failed, "
    "MAX(finished_ns) AS last_ns FROM jobs WHERE project_id = :project"
)
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Measure:
    """The benchmark's own connection to a target's database, for measurement queries
    (the store has no general query interface, on purpose). Queries are written with
    ``:name`` placeholders; PostgreSQL gets psycopg's ``%(name)s``. SQLite reads run in
    a thread on a read-only connection (WAL lets them run beside the workers' writes)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._pg: psycopg.AsyncConnection[Any] | None = None
        self._lite: sqlite3.Connection | None = None

    async def __aenter__(self) -> Measure:
        if self.target.url:
            self._pg = await psycopg.AsyncConnection.connect(self.target.url, autocommit=True)
        else:
            path = self.target.data_dir / "orchestrator.db"
            self._lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._lite is not None:
            self._lite.close()

    async def fetchall(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            cur = await self._pg.execute(_PLACEHOLDER.sub(r"%(\1)s", query), params)
            return list(await cur.fetchall())
        lite = self._lite
        assert lite is not None
        return await anyio.to_thread.run_sync(lambda: lite.execute(query, dict(params)).fetchall())


async def done_counts(measure: Measure, project_id: str) -> tuple[int, int, int | None]:
    """(terminal jobs, failed or cancelled jobs, last finished_ns) of a round's project."""
    row = (await measure.fetchall(_DONE_SQL, {"project": project_id}))[0]
    return int(row[0] or 0), int(row[1] or 0), row[2]


async def wait_done(
    measure: Measure, project_id: str, n: int, *, within: float, check: Callable[[], None], interval: float = 0.02
) -> tuple[int, int]:
    """Wait until ``n`` jobs of ``project_id`` are terminal; (failed, last finished_ns)."""
    deadline = time.monotonic() + within
    while True:
        done, failed, last = await done_counts(measure, project_id)
        if done >= n:
            assert last is not None
            return failed, int(last)
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {n} jobs of {project_id} done after {within:.0f} s")
        await anyio.sleep(interval)


def alive_check(procs: Sequence[Proc]) -> Callable[[], None]:
    def check() -> None:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); see {proc.log_path}")

    return check


@dataclass
class RoundSpec:
    jobs: int
    modules: tuple[str, ...] = ("noop",)
    producers: int = 4
    timeout: float = 300.0
    source: str = field(default_factory=lambda: str(SOURCE))


_round_counter = 0


def next_project(prefix: str) -> str:
    global _round_counter
    _round_counter += 1
    return f"{prefix}-{os.getpid()}-{_round_counter}"


async def produce(app: Any, spec: RoundSpec, project_id: str, *, count: int | None = None) -> None:
    """Create ``count`` (default ``spec.jobs``) jobs from ``spec.producers`` concurrent tasks."""
    remaining = count if count is not None else spec.jobs
    request = {"project_id": project_id, "source": spec.source, "modules": list(spec.modules)}

    async def producer() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await app.create.execute(request)

    async with anyio.create_task_group() as tg:
        for _ in range(spec.producers):
            tg.start_soon(producer)


def ours_round(
    target: Target, telemetry: ProducerTelemetry, spec: RoundSpec, procs: Sequence[Proc], *, prefix: str = "r"
) -> RoundResult:
    """Create ``spec.jobs`` jobs while the workers run them; jobs/s from the first creation
    to the last terminal transition (its finished_ns, as stored)."""
    project_id = next_project(prefix)

    async def go() -> RoundResult:
        settings = target.settings(pool=spec.producers + 1)
        server = ServerCpu(target.url) if target.url else None
        async with open_app(settings, registry=registry(), telemetry=telemetry.job) as app:
            server_before = server.seconds() if server is not None else None
            workers_before = sum(cpu_seconds(p.pid) for p in procs)
            producer_before = time.process_time()
            start_ns = time.time_ns()
            await produce(app, spec, project_id)
            produced_ns = time.time_ns()
            producer_cpu = time.process_time() - producer_before
            async with Measure(target) as measure:
                failed, last_ns = await wait_done(
                    measure, project_id, spec.jobs, within=spec.timeout, check=alive_check(procs)
                )
            worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - workers_before
            server_cpu = cpu_delta(server_before, server.seconds() if server is not None else None)
        return RoundResult(
            spec.jobs, (last_ns - start_ns) / 1e9, (produced_ns - start_ns) / 1e9, failed, worker_cpu, producer_cpu,
            server_cpu,
        )

    return anyio.run(go)


# -- memory -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.monotonic() - started, kib))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        kib = rss_kib(self.pid)
        if kib is not None:
            self.samples.append((self.samples[-1][0] + self.interval if self.samples else 0.0, kib))


# -- statistics ---------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max (and the values) of several repetitions."""
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
