"""Telemetry faults never slow or break job processing.

* OTLP collector unreachable (a closed port), slow (accepts TCP, never answers) and
  answering 503 to everything: a worker subprocess runs a fixed batch of noop jobs
  without ever waiting for an export (the whole batch completes before the first
  export attempt has given up), its memory stays bounded, export failures are counted
  and warned about at a limited rate, and it still exits promptly on SIGTERM. The
  throughput against OTEL_SDK_DISABLED and a healthy collector is measured and
  reported, not asserted (speed belongs to the benchmarks).
* The embedded file default with a telemetry directory that cannot be written (the
  path is a file; a full tmpfs when mounting one is possible): a warning, not a crash,
  and every job completes.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from otlp_receiver import OtlpHttpReceiver

from faults.helpers import ORCHESTRATOR_CMD, embedded_env, events_named, figures, json_lines, rss_mb
from orchestrator.bootstrap import open_app
from orchestrator.domain import JobStatus
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry

# -- fake collectors ----------------------------------------------------------------------


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def slow_collector() -> Iterator[str]:
    """Accepts connections and never answers (holds them until closed)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


@contextlib.contextmanager
def unavailable_collector() -> Iterator[str]:
    """Answers 503 to everything."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- one batch through a worker subprocess ------------------------------------------------


@dataclass
class BatchResult:
    jobs_per_s: float
    completed: int
    #: From the first job started to the last one finished.
    seconds: float
    #: The longest time without a job finishing, from the first start to the last finish.
    longest_pause_s: float
    #: From the worker's start (its process spawned) to SIGTERM.
    lifetime_s: float
    rss_start_mb: float
    rss_end_mb: float
    warnings: list[dict[str, Any]]
    exit_s: float
    rc: int
    output: str

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    @property
    def failures(self) -> int:
        return max((int(r.get("failures", 0)) for r in self.warnings), default=0)


def quiet() -> JobTelemetry:
    return JobTelemetry(NoOpTracerProvider(), NoOpMeterProvider())


def submit_noops(data_dir: Path, source: Path, plugin: Any, count: int) -> list[str]:
    async def go() -> list[str]:
        settings = Settings(data_dir=data_dir, load_entry_points=False)
        store = SQLiteJobStore(settings.database_path)
        async with open_app(settings, registry=ModuleRegistry([plugin.Noop()]), telemetry=quiet(), store=store) as app:
            body = {"project_id": "telemetry-faults", "source": str(source), "modules": ["noop"]}
            return [(await app.create.execute(body)).id for _ in range(count)]

    return anyio.run(go)


def completed_stats(data_dir: Path) -> tuple[int, float, float]:
    """Completed jobs: how many, the seconds from the first start to the last finish, and
    the longest pause between two consecutive finishes (from the first start)."""

    async def go() -> tuple[int, float, float]:
        store = SQLiteJobStore(data_dir / "orchestrator.db")
        await store.open()
        try:
            done = await store.list_jobs(status=JobStatus.COMPLETED, limit=100_000)
        finally:
            await store.close()
        if not done:
            return 0, 0.0, 0.0
        first = min(j.started_ns or 0 for j in done)
        finishes = [first, *sorted(j.finished_ns or 0 for j in done)]
        pause = max(b - a for a, b in itertools.pairwise(finishes)) / 1e9
        return len(done), (finishes[-1] - first) / 1e9, pause

    return anyio.run(go)


def run_batch(
    root: Path,
    name: str,
    plugin_dir: Path,
    plugin: Any,
    otel_env: dict[str, str],
    *,
    jobs: int,
    want_warning: bool,
    warning_within_s: float = 20,
) -> BatchResult:
    data_dir = root / name
    source = root / "project"
    source.mkdir(exist_ok=True)
    submit_noops(data_dir, source, plugin, jobs)
    env = embedded_env(data_dir, plugin_dir, concurrency=4, poll_seconds=0.05, webhooks="false")
    env.update(otel_env)
    log_path = root / f"{name}.log"
    spawned = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*ORCHESTRATOR_CMD, "worker"], cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while "worker started" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.02)
        rss_start = rss_mb(proc.pid)
        started = time.monotonic()
        deadline = started + 300
        while (done := completed_stats(data_dir))[0] < jobs:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"only {done[0]} of {jobs} jobs completed"
            time.sleep(0.1)
        rss_end = rss_mb(proc.pid)
        if want_warning:  # a slow collector fails an export only when it times out
            deadline = time.monotonic() + warning_within_s
            while '"telemetry.export_failed"' not in log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline, "no telemetry.export_failed warning"
                time.sleep(0.1)
        asked = time.monotonic()
        lifetime = asked - spawned  # it may export (and warn) as soon as it runs
        proc.terminate()
        rc = proc.wait(timeout=30)
        exit_s = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    count, seconds, pause = completed_stats(data_dir)
    warnings = list(events_named(json_lines(output), "telemetry.export_failed"))
    return BatchResult(
        count / max(seconds, 1e-6), count, seconds, pause, lifetime, rss_start, rss_end, warnings, exit_s, rc, output
    )


FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_BLRP_SCHEDULE_DELAY": "100",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
}
#: The faulty collectors get a long export timeout: each export attempt (with its
#: retries) holds the exporter's thread this long. Job processing never waits on an
#: export (the batch processors export in their own threads and drop when full), so
#: jobs keep finishing throughout; a job path that waited for an export (a synchronous
#: processor, a flush at a transition) would pause about this long between two
#: finishes, however fast or slow the machine is. (A queue that blocked when full would
#: only show once the 4096-item queues fill: more jobs than the CI run has.)
EXPORT_TIMEOUT_S = 30
#: otel/setup.py warns about failed exports once per signal per this many seconds.
WARNING_INTERVAL_S = 30
FAULTY_EXPORT = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT_S)}
#: README, Reliability: a faulty collector costs no throughput beyond a healthy one's
#: (measured 1.1-1.4x of it, dropped telemetry costs less CPU). Reported as a miss, not
#: asserted: on a shared 2-core machine one run's throughput is noise-bound.
DOCUMENTED_FAULTY_OVER_HEALTHY = 1.0


@pytest.mark.timeout(1200)
def test_an_unreachable_slow_or_failing_collector_never_holds_up_jobs_or_grows_memory(
    tmp_path: Path, fault_plugin_dir: Path, fault_plugin: Any, soak: bool
) -> None:
    """Asserted: every job completes, with no pause as long as one export timeout between
    two finishes (no job ever waited for an export), memory stays bounded, failures are
    warned about at a limited rate,
    SIGTERM stops the worker promptly. Measured and printed: the throughput of each
    variant against OTEL_SDK_DISABLED and a healthy collector (one run each), with a miss
    marked where a faulty collector falls under the documented expectation."""
    jobs = 3000 if soak else 500
    collectors = {
        "closed port": closed_port,
        "slow (never answers)": slow_collector,
        "503": unavailable_collector,
    }
    runs = 0

    def measure(name: str) -> BatchResult:
        nonlocal runs
        runs += 1
        label = f"{name.split()[0]}-{runs}"
        if name == "disabled":
            env = {"OTEL_SDK_DISABLED": "true"}
            return run_batch(tmp_path, label, fault_plugin_dir, fault_plugin, env, jobs=jobs, want_warning=False)
        if name == "healthy collector":
            with OtlpHttpReceiver() as healthy:
                env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": healthy.endpoint}
                return run_batch(tmp_path, label, fault_plugin_dir, fault_plugin, env, jobs=jobs, want_warning=False)
        with collectors[name]() as endpoint:
            env = {**FAULTY_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
            return run_batch(
                tmp_path,
                label,
                fault_plugin_dir,
                fault_plugin,
                env,
                jobs=jobs,
                want_warning=True,
                warning_within_s=EXPORT_TIMEOUT_S + 20,
            )

    results = {name: measure(name) for name in ("disabled", "healthy collector", *collectors)}
    baseline = results["disabled"].jobs_per_s
    healthy = results["healthy collector"].jobs_per_s

    def verdict(name: str) -> str:
        if name not in collectors:
            return ""
        ratio = results[name].jobs_per_s / healthy
        return (
            ""
            if ratio >= DOCUMENTED_FAULTY_OVER_HEALTHY
            else f"; MISS: under {DOCUMENTED_FAULTY_OVER_HEALTHY}x healthy"
        )

    figures(
        f"telemetry faults ({jobs} noop jobs, one worker subprocess, SQLite, concurrency 4; one run each; "
        f"faulty collectors with a {EXPORT_TIMEOUT_S} s export timeout)",
        {
            name: f"{r.jobs_per_s:6.0f} jobs/s in {r.seconds:.1f} s, longest pause {r.longest_pause_s:.2f} s "
            f"({r.jobs_per_s / baseline:4.2f} of disabled, "
            f"{r.jobs_per_s / healthy:4.2f} of healthy{verdict(name)}), "
            f"RSS +{r.rss_growth_mb:.1f} MiB ({r.rss_start_mb:.0f} -> {r.rss_end_mb:.0f}), "
            f"export_failed warnings {len(r.warnings)} (failed batches {r.failures}), "
            f"exit after SIGTERM {r.exit_s:.1f} s"
            for name, r in results.items()
        },
    )
    for name, r in results.items():
        assert r.rc == 0, f"{name}: {r.output[-2000:]}"
        assert r.completed == jobs, name
        assert "Traceback" not in r.output, f"{name}: {r.output[-3000:]}"
        assert r.rss_growth_mb < 60, f"{name}: RSS grew {r.rss_growth_mb:.1f} MiB"
        assert r.exit_s < 10, f"{name}: took {r.exit_s:.1f} s to exit"
        if name in ("disabled", "healthy collector"):
            assert not r.warnings
            continue
        # No job waited for an export: never a pause as long as an export attempt.
        assert r.longest_pause_s < EXPORT_TIMEOUT_S / 2, f"{name}: stalled {r.longest_pause_s:.1f} s"
        # Rate-limited: at most one warning per signal (traces, metrics, logs) per interval,
        # over the worker's whole life, its shutdown (the last exports) included.
        allowed = 3 * (1 + int((r.lifetime_s + r.exit_s) // WARNING_INTERVAL_S))
        assert 1 <= len(r.warnings) <= allowed, [w.get("message") for w in r.warnings]
        assert {w.get("signal") for w in r.warnings} <= {"traces", "metrics", "logs"}
        assert r.failures >= 1


# -- the embedded file default, unwritable ------------------------------------------------


def _telemetry_path_is_a_file(data_dir: Path) -> None:
    (data_dir / "telemetry").write_text("not a directory\n")


def _full_tmpfs(data_dir: Path) -> None:
    target = data_dir / "telemetry"
    target.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    with contextlib.suppress(OSError), (target / "filler").open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


@pytest.mark.parametrize(
    "make_unwritable", [_telemetry_path_is_a_file, _full_tmpfs], ids=["telemetry-path-is-a-file", "full-tmpfs"]
)
def test_an_unwritable_telemetry_directory_degrades_to_a_warning(
    tmp_path: Path, fault_plugin_dir: Path, fault_plugin: Any, make_unwritable: Any
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    try:
        make_unwritable(data_dir)
        result = run_batch(
            tmp_path,
            "data",
            fault_plugin_dir,
            fault_plugin,
            {"OTEL_BSP_SCHEDULE_DELAY": "100"},
            jobs=20,
            want_warning=True,
        )
    finally:
        if (data_dir / "telemetry").is_mount():
            subprocess.run(["umount", str(data_dir / "telemetry")], check=False)
    figures(
        f"unwritable telemetry directory ({make_unwritable.__name__.strip('_').replace('_', ' ')})",
        {
            "jobs completed": f"{result.completed} of 20",
            "worker exit status": result.rc,
            "telemetry.export_failed warnings": len(result.warnings),
            "first warning": (result.warnings[0].get("message", "") if result.warnings else "")[:110],
        },
    )
    assert result.rc == 0, result.output[-2000:]
    assert result.completed == 20
    assert "Traceback" not in result.output, result.output[-3000:]
    assert 1 <= len(result.warnings) <= 6, [w.get("message") for w in result.warnings]  # per writer and signal
