"""Worker chaos on PostgreSQL: worker processes SIGKILLed at random moments and
restarted, random jobs cancelled (in-process and with ``orchestrator cancel``), modules
that fail, panic and time out. Afterwards no job is lost or stuck, every history is a
legal path with exactly one terminal row, every job is one trace with one root span
whose lifecycle events are the stored history, and the metrics of every process that
exited gracefully count exactly the transitions it made.

Root spans and killed workers: the root span is emitted by the process that performs
the terminal transition, after the commit. A worker SIGKILLed between that commit and
the export (OTEL_BSP_SCHEDULE_DELAY=50 ms here) loses it: that is inherent to a
process dying, and the test counts such losses, checks they happened within a few
seconds before a kill, and asserts exactly one root for every job finished by a
process that was not killed (the workers alive at the end are stopped with SIGTERM,
which flushes their telemetry).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pg_helpers import WorkerProc, query
from pydantic import SecretStr

from faults.helpers import (
    FaultCluster,
    figures,
    group_history,
    last_metrics,
    lifecycle_of,
    metric_sums,
    path_problems,
    roots_by_job,
    spans_of,
    stored_lifecycle,
)
from orchestrator.bootstrap import open_app
from orchestrator.domain import IllegalTransition, Job
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from otel.files import SIGNAL_FILES, FileMetricExporter, FileSpanExporter, JsonlWriter
from otel.ids import JobIdGenerator

TERMINAL = ("completed", "failed", "cancelled")


def is_worker(worker_id: str | None) -> bool:
    """A worker's id (host:pid:token), not a requester's (cli:user@host, api:address)."""
    return worker_id is not None and not worker_id.startswith(("cli:", "api:"))


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int
    workers: int
    concurrency: int
    #: seconds over which the jobs are submitted (the chaos lasts at least as long)
    submit_seconds: float
    min_chaos_seconds: float
    kill_every: tuple[float, float]
    cancel_share: float
    cli_cancels: int
    drain_timeout: float

    @classmethod
    def ci(cls) -> ChaosConfig:
        return cls(200, 3, 4, 10.0, 14.0, (0.8, 2.2), 0.12, 2, 90.0)

    @classmethod
    def soak(cls) -> ChaosConfig:
        return cls(2000, 3, 4, 100.0, 120.0, (0.8, 3.0), 0.10, 8, 300.0)


WORKER_SETTINGS: dict[str, object] = {
    "lease_seconds": 1.5,
    "reap_seconds": 0.3,
    "max_attempts": 5,
    "cancel_poll_seconds": 0.2,
    "poll_seconds": 0.5,
    "shutdown_grace_seconds": 3,
    "webhooks": "false",
}


def job_request(rng: random.Random, source: Path) -> tuple[dict[str, Any], str]:
    """A random job: mostly a flaky module that sleeps a little, sometimes one that
    fails, panics or times out; some jobs have two modules."""
    roll = rng.random()
    if roll < 0.08:
        mode, options = "error", {"mode": "error"}
    elif roll < 0.15:
        mode, options = "panic", {"mode": "panic"}
    elif roll < 0.20:
        mode, options = "timeout", {"mode": "timeout"}
    elif roll < 0.25:
        mode, options = "ok", {"mode": "ok"}
    else:
        mode, options = "sleep", {"mode": "sleep", "seconds": round(rng.uniform(0.05, 0.6), 3)}
    modules = ["flaky", "noop"] if rng.random() < 0.1 else ["flaky"]
    body = {
        "project_id": "chaos",
        "source": str(source),
        "modules": modules,
        "options": {"module_options": {"flaky": options}},
    }
    return body, mode


def file_telemetry(directory: Path) -> tuple[JobTelemetry, Callable[[], None]]:
    """A JobTelemetry of this (the submitting) process writing OTLP/JSON files, like a
    CLI process would, on private providers (nothing global is set)."""
    directory.mkdir(parents=True, exist_ok=True)
    tracer_provider = TracerProvider(id_generator=JobIdGenerator())
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(FileSpanExporter(JsonlWriter(directory / SIGNAL_FILES["traces"])))
    )
    reader = PeriodicExportingMetricReader(
        FileMetricExporter(JsonlWriter(directory / SIGNAL_FILES["metrics"])), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(metric_readers=[reader])

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return JobTelemetry(tracer_provider, meter_provider), shutdown


@dataclass
class Incarnation:
    slot: str
    proc: WorkerProc
    killed_ns: int | None = None
    stopped_rc: int | None = None


@dataclass
class Chaos:
    cfg: ChaosConfig
    cluster: FaultCluster
    rng: random.Random
    incarnations: list[Incarnation] = field(default_factory=list)
    live: dict[str, Incarnation] = field(default_factory=dict)
    kills: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, slot: str) -> None:
        with self.lock:
            n = sum(1 for i in self.incarnations if i.slot == slot)
            proc = self.cluster.start_worker(
                f"{slot}{n}", WORKER_SETTINGS, ready=False, concurrency=self.cfg.concurrency
            )
            incarnation = Incarnation(slot, proc)
            self.incarnations.append(incarnation)
            self.live[slot] = incarnation

    def kill_one(self) -> None:
        slot = self.rng.choice(sorted(self.live))
        incarnation = self.live[slot]
        incarnation.killed_ns = time.time_ns()
        incarnation.proc.kill()
        self.kills += 1
        self.start(slot)

    def owner(self, worker_id: str | None) -> Incarnation | None:
        if not is_worker(worker_id):
            return None  # the submitter, or who asked for a cancel (cli:user@host)
        found = [i for i in self.incarnations if i.proc.owns(worker_id)]
        assert len(found) == 1, f"worker id {worker_id} matches {len(found)} processes"
        return found[0]


@pytest.mark.postgres
@pytest.mark.timeout(1200)  # the --soak variant runs for minutes; CI mode is bounded by its own deadlines
def test_worker_chaos_loses_no_job_and_leaves_none_stuck(
    postgres_url: str, fault_db_url: str, fault_plugin_dir: Path, fault_plugin: Any, tmp_path: Path, soak: bool
) -> None:
    cfg = ChaosConfig.soak() if soak else ChaosConfig.ci()
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    source = tmp_path / "project"
    source.mkdir()
    (source / "main.py").write_text("print('chaos')\n")
    cluster = FaultCluster(
        tmp_path,
        fault_db_url,
        fault_plugin_dir,
        extra_env={"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
    )
    chaos = Chaos(cfg, cluster, rng)
    submitter_dir = tmp_path / "data-submitter" / "telemetry"
    telemetry, shutdown_telemetry = file_telemetry(submitter_dir)
    submitted: dict[str, str] = {}  # job id -> module mode
    jobs: dict[str, Job] = {}
    cancels = Counter[str]()
    started = time.monotonic()

    async def main() -> None:
        settings = Settings(
            database_url=SecretStr(fault_db_url),
            data_dir=tmp_path / "data-submitter",
            load_entry_points=False,
            pg_pool_size=4,
        )
        registry = ModuleRegistry([fault_plugin.Flaky(), fault_plugin.Noop()])
        async with open_app(settings, registry=registry, telemetry=telemetry) as app:
            for slot in "abcdefgh"[: cfg.workers]:
                await anyio.to_thread.run_sync(chaos.start, slot)
            submitting_done = anyio.Event()
            stop = anyio.Event()

            async def submit() -> None:
                batches = max(1, cfg.jobs // 20)
                for batch in range(batches):
                    count = cfg.jobs // batches + (1 if batch < cfg.jobs % batches else 0)
                    for _ in range(count):
                        body, mode = job_request(rng, source)
                        job = await app.create.execute(body)
                        submitted[job.id] = mode
                        jobs[job.id] = job
                    await anyio.sleep(cfg.submit_seconds / batches)
                submitting_done.set()

            async def kill() -> None:
                while not stop.is_set():
                    with anyio.move_on_after(rng.uniform(*cfg.kill_every)):
                        await stop.wait()
                    if not stop.is_set():
                        await anyio.to_thread.run_sync(chaos.kill_one)

            async def cancel() -> None:
                # In-process cancels of random jobs, whatever their status at that moment.
                while not stop.is_set():
                    await anyio.sleep(rng.uniform(0.02, 0.15))
                    if submitted and rng.random() < cfg.cancel_share * 4:
                        job_id = rng.choice(list(submitted)[-40:])  # recent jobs: pending, queued or running
                        try:
                            after = await app.workflow.cancel(job_id, reason="chaos: cancelled in-process")
                            cancels["requested" if after.status.value == "running" else "immediate"] += 1
                        except IllegalTransition:
                            cancels["refused (already terminal)"] += 1

            async def cli_cancel() -> None:
                for _ in range(cfg.cli_cancels):
                    await anyio.sleep(cfg.submit_seconds / (cfg.cli_cancels + 1))
                    job_id = list(submitted)[-1]  # the newest job: most likely still queued or running
                    done = await anyio.to_thread.run_sync(
                        lambda job_id=job_id: cluster.cli("cancel", job_id, "--reason", "chaos: orchestrator cancel")
                    )
                    assert done.returncode in (0, 2), done.stderr
                    assert "Traceback" not in done.stderr, done.stderr
                    cancels[f"cli rc={done.returncode}"] += 1

            async def stop_when_done() -> None:
                await submitting_done.wait()
                while time.monotonic() - started < cfg.min_chaos_seconds:
                    await anyio.sleep(0.1)
                stop.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                tg.start_soon(kill)
                tg.start_soon(cancel)
                tg.start_soon(cli_cancel)
                tg.start_soon(stop_when_done)

    try:
        anyio.run(main)
        shutdown_telemetry()
        chaos_seconds = time.monotonic() - started

        # Drain: the workers alive now finish everything (recovering the killed ones' jobs).
        def open_jobs() -> int:
            rows = query(
                fault_db_url, "SELECT COUNT(*) AS n FROM jobs WHERE status <> ALL(%(t)s)", {"t": list(TERMINAL)}
            )
            return int(rows[0]["n"])

        deadline = time.monotonic() + cfg.drain_timeout
        while open_jobs() and time.monotonic() < deadline:
            for incarnation in chaos.live.values():
                assert incarnation.proc.alive(), incarnation.proc.describe()
            time.sleep(0.2)
        drain_seconds = time.monotonic() - started - chaos_seconds

        # Stop the survivors gracefully: SIGTERM flushes their telemetry. (A replacement
        # started moments ago may still be importing: before its handler is installed,
        # SIGTERM would just end it, so wait until it runs.)
        for incarnation in chaos.live.values():
            incarnation.proc.wait_ready()
        for incarnation in chaos.live.values():
            incarnation.proc.terminate()
        for incarnation in chaos.live.values():
            incarnation.stopped_rc = incarnation.proc.wait(30)
    finally:
        cluster.close()

    rows = query(fault_db_url, "SELECT * FROM jobs")
    history = group_history(query(fault_db_url, "SELECT * FROM job_history ORDER BY job_id, seq"))
    by_id = {r["id"]: r for r in rows}

    lost = sorted(set(submitted) - set(by_id))
    stuck = sorted(r["id"] for r in rows if r["status"] not in TERMINAL)
    terminal_rows = {j: [h for h in history[j] if h["status_to"] in TERMINAL] for j in submitted}
    duplicate_terminals = sorted(j for j, t in terminal_rows.items() if len(t) > 1)
    illegal = {j: p for j in submitted if (p := path_problems(history[j]))}
    running_unleased = query(fault_db_url, "SELECT id FROM jobs WHERE status = 'running' AND lease_owner IS NULL")

    # -- traces: one trace per job, one root, its events the stored history ------------
    telemetry_dirs = [submitter_dir, *(i.proc.data_dir / "telemetry" for i in chaos.incarnations)]
    telemetry_dirs.append(cluster.data_dir("cli") / "telemetry")
    spans = spans_of(d for d in telemetry_dirs if d.exists())
    roots = roots_by_job(spans)
    trace_ids: dict[str, set[str]] = {}
    for s in spans:
        job_id = s.attributes.get("job_id")
        if job_id in submitted:
            trace_ids.setdefault(str(job_id), set()).add(s.trace_id)
    wrong_trace = sorted(j for j, ids in trace_ids.items() if ids != {jobs[j].trace.trace_id})

    bad_roots: dict[str, str] = {}
    root_lost_by_kill: list[float] = []  # seconds between the terminal commit and the kill
    event_mismatch: dict[str, Any] = {}
    finished_by: Counter[str] = Counter()
    for job_id in submitted:
        if not terminal_rows[job_id]:
            continue
        terminal = terminal_rows[job_id][-1]
        owner = chaos.owner(terminal["worker_id"])
        finished_by["killed worker" if owner and owner.killed_ns else "worker" if owner else "submitter/cli"] += 1
        # Root span ids are the persisted ones: a root exported by its worker and rebuilt
        # from the store by a reconciler (durable traces) is the same span, counted once.
        found = list({s.span_id: s for s in roots.get(job_id, [])}.values())
        if len(found) == 1:
            if lifecycle_of(found[0]) != stored_lifecycle(history[job_id]):
                event_mismatch[job_id] = (lifecycle_of(found[0]), stored_lifecycle(history[job_id]))
        elif not found and owner is not None and owner.killed_ns is not None:
            root_lost_by_kill.append((owner.killed_ns - terminal["at_ns"]) / 1e9)
        else:
            bad_roots[job_id] = f"{len(found)} roots; finished by {terminal['worker_id'] or 'submitter/cli'}"

    # -- metrics: each graceful process counted exactly the transitions it made ---------
    def history_counts(predicate: Callable[[str | None], bool]) -> Counter[tuple[Any, ...]]:
        counted: Counter[tuple[Any, ...]] = Counter()
        for rows_of_job in history.values():
            for h in rows_of_job:
                if h["status_from"] == h["status_to"]:
                    continue  # a cancel request recorded in the history: not a transition
                if predicate(h["worker_id"]):
                    counted[(h["status_from"] or "none", h["status_to"])] += 1
        return counted

    metric_mismatch: dict[str, Any] = {}
    graceful = [i for i in chaos.incarnations if i.killed_ns is None]
    for incarnation in graceful:
        assert incarnation.stopped_rc == 0, incarnation.proc.describe()
        exported = metric_sums(
            last_metrics(incarnation.proc.data_dir / "telemetry").values(),
            "orchestrator.job.transitions",
            "status_from",
            "status_to",
        )
        stored = history_counts(incarnation.proc.owns)
        if +exported != +stored:
            metric_mismatch[incarnation.proc.name] = {"exported": dict(exported), "stored": dict(stored)}
    # the submitter and the `orchestrator cancel` processes make the transitions without a worker id
    exported_none = metric_sums(
        [*last_metrics(submitter_dir).values(), *last_metrics(cluster.data_dir("cli") / "telemetry").values()],
        "orchestrator.job.transitions",
        "status_from",
        "status_to",
    )
    stored_none = history_counts(lambda worker_id: not is_worker(worker_id))
    if +exported_none != +stored_none:
        metric_mismatch["submitter+cli"] = {"exported": dict(exported_none), "stored": dict(stored_none)}

    def terminal_count(counts: Counter[tuple[Any, ...]]) -> int:
        return sum(v for (_, to), v in counts.items() if to in TERMINAL)

    killed = [i for i in chaos.incarnations if i.killed_ns is not None]
    killed_stored = sum(terminal_count(history_counts(i.proc.owns)) for i in killed)
    killed_exported = sum(
        terminal_count(
            metric_sums(
                last_metrics(i.proc.data_dir / "telemetry").values(),
                "orchestrator.job.transitions",
                "status_from",
                "status_to",
            )
        )
        for i in killed
    )
    graceful_terminals = sum(terminal_count(history_counts(i.proc.owns)) for i in graceful) + terminal_count(
        stored_none
    )

    statuses = Counter(r["status"] for r in rows)
    recoveries = sum(
        1 for rs in history.values() for h in rs if (h["status_from"], h["status_to"]) == ("running", "queued")
    )
    figures(
        f"worker chaos ({'soak' if soak else 'CI'}; seed {seed}; FAULTS_SEED={seed} reproduces the choices)",
        {
            "jobs": len(submitted),
            "worker processes started": len(chaos.incarnations),
            "kills (SIGKILL)": chaos.kills,
            "cancels": dict(cancels),
            "module faults asked": dict(Counter(m for m in submitted.values() if m in ("error", "panic", "timeout"))),
            "final statuses": dict(statuses),
            "worker_lost failures": sum(1 for r in rows if (r["reason"] or "").startswith("worker_lost")),
            "lease recoveries (running->queued)": recoveries,
            "max attempt": max(r["attempt"] for r in rows),
            "terminal transitions by": dict(finished_by),
            "chaos / drain seconds": f"{chaos_seconds:.1f} / {drain_seconds:.1f}",
            "lost": len(lost),
            "stuck": len(stuck),
            "running without lease": len(running_unleased),
            "illegal transitions": len(illegal),
            "duplicate terminals": len(duplicate_terminals),
            "jobs in != 1 trace": len(wrong_trace),
            "traces with != 1 root (not explained by a kill)": len(bad_roots),
            "root spans lost to a SIGKILL after the terminal commit": len(root_lost_by_kill),
            "  commit-to-kill gap of those (s)": [round(g, 3) for g in sorted(root_lost_by_kill)],
            "root events != stored history": len(event_mismatch),
            "metrics == store (graceful processes)": f"{len(metric_mismatch) == 0} "
            f"({graceful_terminals} terminal transitions by {len(graceful)} workers + submitter/cli)",
            "killed workers: terminal transitions stored / in their last metrics": f"{killed_stored} / "
            f"{killed_exported} (gap {killed_stored - killed_exported})",
        },
    )
    assert not lost, f"lost jobs: {lost[:10]}"
    assert not stuck, f"stuck jobs: {[(j, by_id[j]['status']) for j in stuck[:10]]}"
    assert not running_unleased
    assert not duplicate_terminals, duplicate_terminals[:10]
    assert not illegal, dict(list(illegal.items())[:10])
    assert not wrong_trace, wrong_trace[:10]
    assert not bad_roots, dict(list(bad_roots.items())[:10])
    assert not event_mismatch, dict(list(event_mismatch.items())[:3])
    assert not metric_mismatch, metric_mismatch
    # A root lost to a kill was committed moments before the kill (the export is near
    # immediate): a larger gap would mean spans sit unexported for long.
    assert all(gap < 5.0 for gap in root_lost_by_kill), root_lost_by_kill
    assert chaos.kills >= (40 if soak else 5)
    assert sum(v for k, v in cancels.items() if not k.startswith("cli")) >= 5
    assert statuses["completed"] > 0
    assert statuses["failed"] > 0
    assert statuses["cancelled"] > 0
