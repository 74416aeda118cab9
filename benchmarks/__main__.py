"""The benchmark runner: ``python -m benchmarks`` (``make bench``).

Runs the scenarios side by side in one run on this machine, prints one Markdown table
(median of several repetitions, with min and max) and writes every number to JSON
(default ``benchmarks/results/latest.json``; the folder is git-ignored).

Scenarios (``--only`` picks some):

* ``throughput``: end-to-end jobs/s, first creation to last Completed, for jobs of 1 and 8
  ``noop`` modules: PostgreSQL with 1 and 4 worker processes (concurrency 4 each), SQLite
  with 1 worker process at concurrency 1 and 4; full telemetry over OTLP/HTTP to a local sink.
* ``telemetry``: the same (PostgreSQL 1 worker process, SQLite 1 worker process, both at
  concurrency 4, jobs of 1 module) with telemetry off (``OTEL_SDK_DISABLED=true``), over
  OTLP/HTTP to the sink, and to the embedded files; ``noop`` and ``work10`` modules.
* ``telemetry_cpu``: one no-op job's telemetry calls replayed in this process without a
  database (``benchmarks.telemetry_cpu``): CPU per job over telemetry off, as built and
  with what each optimisation replaced put back.
* ``latency``: enqueue -> Running (queued_ns -> started_ns as stored) on PostgreSQL, idle
  worker and under load.
* ``memory``: one worker's RSS over a long run, collector reachable and unreachable.
* ``peers``: procrastinate and pgqueuer on the same no-op job, PostgreSQL, same concurrency.
* ``ceiling``: pgbench replaying one job's statements: jobs' worth of statements per second.
* ``notify``: the cost of NOTIFY on enqueue (``benchmarks.notify_cost``).
* ``analysis``: the built-in modules on real trees against anchors (``benchmarks.analysis``);
  long, so only with ``--only analysis``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from benchmarks import analysis, ceiling, harness, notify_cost, peers, telemetry_cpu
from benchmarks.harness import (
    MODES,
    Mode,
    Proc,
    ProducerTelemetry,
    RoundSpec,
    RssSampler,
    Target,
    clean_env,
    ours_round,
    percentile,
    postgres_target,
    python_m,
    running,
    sqlite_target,
    start_workers,
    summary,
)
from benchmarks.modules import noop_modules, registry
from benchmarks.pg import fresh_database
from benchmarks.sink import closed_port
from orchestrator import __version__
from orchestrator.bootstrap import open_app
from otel.logs import configure_logging

SCENARIOS = ("throughput", "telemetry", "telemetry_cpu", "latency", "memory", "peers", "ceiling", "notify", "analysis")
#: Run when --only is not given (analysis takes tens of minutes: ask for it).
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name != "analysis")
RESULTS = Path(__file__).resolve().parent / "results"

log = logging.getLogger("benchmarks")


# -- report -------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    backend: str
    config: str
    metric: str
    unit: str
    stats: dict[str, Any]
    note: str = ""


@dataclass
class Report:
    args: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, scenario: str, backend: str, config: str, metric: str, unit: str, values: Sequence[float],
            note: str = "") -> Row:
        row = Row(scenario, backend, config, metric, unit, summary(values), note)
        self.rows.append(row)
        s = row.stats
        progress(f"[{scenario}] {backend} {config} {metric}: {_fmt(s['median'], unit)} "
                 f"(min {_fmt(s['min'], unit)}, max {_fmt(s['max'], unit)}) {unit} {note}".rstrip())
        return row

    def find(self, scenario: str, backend: str, config: str, metric: str) -> Row | None:
        for row in self.rows:
            if (row.scenario, row.backend, row.config, row.metric) == (scenario, backend, config, metric):
                return row
        return None

    def markdown(self) -> str:
        lines = [
            "| scenario | backend | configuration | metric | median | min | max | unit |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in self.rows:
            s = r.stats
            metric = f"{r.metric} ({r.note})" if r.note else r.metric
            lines.append(f"| {r.scenario} | {r.backend} | {r.config} | {metric} | {_fmt(s['median'], r.unit)} | "
                         f"{_fmt(s['min'], r.unit)} | {_fmt(s['max'], r.unit)} | {r.unit} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "args": self.args,
            "seconds": round(time.time() - self.started, 1),
            "rows": [asdict(r) for r in self.rows],
            "extra": self.extra,
        }


def _fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("ratio", "fraction"):
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit in ("MiB", "%"):
        return f"{value:.1f}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- shared pieces ------------------------------------------------------------------------


@dataclass
class Env:
    args: argparse.Namespace
    report: Report
    log_dir: Path
    endpoint: str
    closed_endpoint: str

    def spec(self, jobs: int, modules: tuple[str, ...] = ("noop",)) -> RoundSpec:
        return RoundSpec(jobs=jobs, modules=modules, producers=self.args.producers)

    def producer(self, mode: Mode, target: Target, endpoint: str | None = None) -> ProducerTelemetry:
        return ProducerTelemetry(mode, endpoint or self.endpoint, target.workdir / "producer-telemetry")

    def round(self, target: Target, mode: Mode, spec: RoundSpec, procs: Sequence[Proc],
              endpoint: str | None = None) -> harness.RoundResult:
        with self.producer(mode, target, endpoint) as telemetry:
            result = ours_round(target, telemetry, spec, procs)
        if result.failed:
            raise RuntimeError(f"{result.failed} jobs did not complete")
        return result

    def warm_up(self, target: Target, mode: Mode, procs: Sequence[Proc], modules: tuple[str, ...] = ("noop",)) -> None:
        self.round(target, mode, self.spec(max(20, self.args.jobs // 10), modules), procs)

    def workers(self, target: Target, count: int, concurrency: int, mode: Mode, tag: str,
                endpoint: str | None = None) -> list[Proc]:
        return start_workers(target, count, concurrency=concurrency, mode=mode, endpoint=endpoint or self.endpoint,
                             log_dir=self.log_dir, tag=tag)


def backend_label(target: Target) -> str:
    return "PostgreSQL" if target.backend == "postgresql" else "SQLite"


# -- 1. throughput ------------------------------------------------------------------------


def scenario_throughput(env: Env) -> None:
    args = env.args
    for processes in (1, 4):
        with postgres_target() as target:
            procs = env.workers(target, processes, args.concurrency, "otlp", f"tp-pg{processes}")
            with running(procs):
                env.warm_up(target, "otlp", procs)
                _throughput_cells(env, target, procs, f"{processes} worker process{'es' if processes > 1 else ''} "
                                  f"x concurrency {args.concurrency}")
    for concurrency in (1, 4):
        with sqlite_target() as target:
            procs = env.workers(target, 1, concurrency, "otlp", f"tp-sqlite-c{concurrency}")
            with running(procs):
                env.warm_up(target, "otlp", procs)
                _throughput_cells(env, target, procs, f"1 worker process x concurrency {concurrency}")


def _throughput_cells(env: Env, target: Target, procs: Sequence[Proc], config: str) -> None:
    args = env.args
    results: dict[int, list[harness.RoundResult]] = {1: [], 8: []}
    for _ in range(args.repeats):
        for modules in (1, 8):
            jobs = args.jobs if modules == 1 else max(20, args.jobs // 2)
            results[modules].append(env.round(target, "otlp", env.spec(jobs, noop_modules(modules)), procs))
    for modules in (1, 8):
        cell = f"{config}, {modules} module{'s' if modules > 1 else ''}"
        env.report.add("throughput", backend_label(target), cell, "jobs/s", "jobs/s",
                       [r.throughput for r in results[modules]])
        _cpu_rows(env, "throughput", backend_label(target), cell, results[modules])
        env.report.extra.setdefault("creation_rate", {})[f"{backend_label(target)} {cell}"] = summary(
            [r.jobs / r.produce_seconds for r in results[modules]])


def _cpu_rows(env: Env, scenario: str, backend: str, config: str, results: Sequence[harness.RoundResult],
              label: str = "") -> None:
    suffix = f", {label}" if label else ""
    env.report.add(scenario, backend, config, f"worker CPU per job{suffix}", "ms", [r.worker_cpu_ms for r in results])
    env.report.add(scenario, backend, config, f"producer CPU per job{suffix}", "ms",
                   [r.producer_cpu_ms for r in results])


# -- 2. telemetry overhead ----------------------------------------------------------------


@contextlib.contextmanager
def _targets(backend: str, count: int) -> Iterator[list[Target]]:
    with contextlib.ExitStack() as stack:
        factory = postgres_target if backend == "postgresql" else sqlite_target
        yield [stack.enter_context(factory()) for _ in range(count)]


def scenario_telemetry(env: Env) -> None:
    """Each mode gets its own database and a warm worker; the rounds of the three modes
    are interleaved in every repetition, so drift hits them alike."""
    args = env.args
    for backend in ("postgresql", "sqlite"):
        for module, jobs in (("noop", args.jobs), ("work10", args.work_jobs)):
            with _targets(backend, len(MODES)) as targets, contextlib.ExitStack() as stack:
                procs: dict[Mode, list[Proc]] = {}
                for mode, target in zip(MODES, targets, strict=True):
                    procs[mode] = stack.enter_context(
                        running(env.workers(target, 1, args.concurrency, mode, f"tel-{backend}-{module}-{mode}"))
                    )
                for mode, target in zip(MODES, targets, strict=True):
                    env.warm_up(target, mode, procs[mode], (module,))
                values: dict[Mode, list[float]] = {m: [] for m in MODES}
                rounds: dict[Mode, list[harness.RoundResult]] = {m: [] for m in MODES}
                for _ in range(args.repeats):
                    for mode, target in zip(MODES, targets, strict=True):
                        result = env.round(target, mode, env.spec(jobs, (module,)), procs[mode])
                        values[mode].append(result.throughput)
                        rounds[mode].append(result)
                label = "PostgreSQL" if backend == "postgresql" else "SQLite"
                config = f"1 worker process x concurrency {args.concurrency}, 1 {module} module"
                names = {"disabled": "telemetry off", "otlp": "OTLP/HTTP to sink", "files": "embedded files"}
                for mode in MODES:
                    env.report.add("telemetry", label, config, f"jobs/s, {names[mode]}", "jobs/s", values[mode])
                for mode in ("otlp", "files"):
                    ratios = [t / d for t, d in zip(values[mode], values["disabled"], strict=True)]
                    env.report.add("telemetry", label, config, f"{names[mode]} / off", "ratio", ratios)
                for mode in MODES:
                    _cpu_rows(env, "telemetry", label, config, rounds[mode], names[mode])


def scenario_telemetry_cpu(env: Env) -> None:
    """``benchmarks.telemetry_cpu``: one no-op job's telemetry calls replayed in this
    process without a database; CPU per job over telemetry off, with what each
    optimisation replaced put back (the SDK's encoder, its synchronous counters)."""
    variants = {
        "as built": {},
        "with the SDK's protobuf encoder": {"official_encoder": True},
        "with the SDK's synchronous instruments (histograms included)": {"sync_metrics": True},
        "with both (as before issue 18, less the debug module record)": {"official_encoder": True,
                                                                        "sync_metrics": True},
    }
    jobs = max(200, env.args.jobs * 2)
    for mode, endpoint in (("otlp", env.endpoint), ("files", None)):
        for label, flags in variants.items():
            result = telemetry_cpu.measure(mode, endpoint, jobs=jobs, repeats=env.args.repeats, **flags)
            name = "OTLP/HTTP to sink" if mode == "otlp" else "embedded files"
            env.report.add("telemetry_cpu", "-", f"one no-op job's telemetry calls, {name}", f"CPU per job, {label}",
                           "ms", result["ms_per_job"])


# -- 3. pickup latency --------------------------------------------------------------------


def scenario_latency(env: Env) -> None:
    """An idle worker with telemetry off and with full telemetry (OTLP), then the same
    worker with full telemetry under a paced background load."""
    args = env.args
    capacity = args.load_rate
    if capacity is None:
        row = env.report.find("throughput", "PostgreSQL", f"1 worker process x concurrency {args.concurrency}, "
                              "1 module", "jobs/s") or env.report.find(
            "telemetry", "PostgreSQL", f"1 worker process x concurrency {args.concurrency}, 1 noop module",
            "jobs/s, OTLP/HTTP to sink")
        capacity = 0.5 * row.stats["median"] if row else 100.0
    cells: list[tuple[Mode, str, float]] = [
        ("disabled", "idle worker, telemetry off", 0.0),
        ("otlp", "idle worker, full telemetry (OTLP)", 0.0),
        ("otlp", f"under load ({capacity:.0f} jobs/s), full telemetry (OTLP)", capacity),
    ]
    with postgres_target() as target:
        for mode in ("disabled", "otlp"):
            procs = env.workers(target, 1, args.concurrency, mode, f"lat-pg-{mode}")
            with running(procs):
                env.warm_up(target, mode, procs)
                for cell_mode, label, rate in cells:
                    if cell_mode != mode:
                        continue
                    with env.producer(mode, target) as telemetry:
                        latencies, achieved = _latency_round(
                            target, telemetry, procs, args.probes, args.probe_gap_ms / 1000, rate
                        )
                    config = f"1 worker process x concurrency {args.concurrency}, {label}"
                    env.report.extra.setdefault("latency", {})[label] = {
                        "latencies_ms": latencies, "load_rate": achieved, "probes": len(latencies)}
                    for p in (50, 99):
                        env.report.add("latency", "PostgreSQL", config, f"p{p} enqueue -> running", "ms",
                                       [percentile(latencies, p)], note=f"{len(latencies)} jobs")
                    env.report.add("latency", "PostgreSQL", config, "max enqueue -> running", "ms", [max(latencies)])


def _latency_round(target: Target, telemetry: ProducerTelemetry, procs: Sequence[Proc], probes: int, gap: float,
                   load_rate: float) -> tuple[list[float], float]:
    probe_project = harness.next_project("probe")
    load_project = harness.next_project("load")
    spec = RoundSpec(jobs=probes)

    async def go() -> tuple[list[float], float]:
        settings = target.settings(pool=10)
        async with open_app(settings, registry=registry(), telemetry=telemetry.job) as app:
            request = {"project_id": probe_project, "source": spec.source, "modules": ["noop"]}
            load_request = {**request, "project_id": load_project}
            loaded = 0
            done = anyio.Event()
            started = time.monotonic()

            async def load() -> None:
                nonlocal loaded
                limiter = anyio.CapacityLimiter(8)
                async with anyio.create_task_group() as tg:
                    next_at = anyio.current_time()
                    while not done.is_set():
                        next_at += 1 / load_rate
                        await anyio.sleep(max(0.0, next_at - anyio.current_time()))

                        async def one() -> None:
                            nonlocal loaded
                            async with limiter:
                                await app.create.execute(load_request)
                                loaded += 1

                        tg.start_soon(one)

            async with anyio.create_task_group() as tg:
                if load_rate > 0:
                    tg.start_soon(load)
                    await anyio.sleep(1.0)  # let the load settle
                for _ in range(probes):
                    await app.create.execute(request)
                    await anyio.sleep(gap)
                done.set()
            elapsed = time.monotonic() - started
            check = harness.alive_check(procs)
            async with harness.Measure(target) as measure:
                await harness.wait_done(measure, probe_project, probes, within=120, check=check)
                if loaded:
                    await harness.wait_done(measure, load_project, loaded, within=300, check=check)
                found = await measure.fetchall(
                    "SELECT (started_ns - queued_ns) / 1e6 FROM jobs WHERE project_id = :project",
                    {"project": probe_project},
                )
            latencies = [float(r[0]) for r in found]
            return latencies, loaded / elapsed if loaded else 0.0

    return anyio.run(go)


# -- 4. memory ----------------------------------------------------------------------------


def scenario_memory(env: Env) -> None:
    args = env.args
    for label, endpoint in (("collector up", env.endpoint), ("collector down", env.closed_endpoint)):
        with postgres_target() as target:
            procs = env.workers(target, 1, args.concurrency, "otlp", f"mem-{label.split()[-1]}", endpoint=endpoint)
            with running(procs), RssSampler(procs[0].pid) as sampler:
                t0 = time.monotonic()
                # A long run: the usual 300 s for the last job after the last creation is
                # too short at the rate of a loaded machine (allow 10 jobs/s).
                spec = replace(env.spec(args.long_jobs), timeout=max(300.0, args.long_jobs / 10))
                result = env.round(target, "otlp", spec, procs, endpoint=endpoint)
                t1 = time.monotonic()
                time.sleep(1.0)  # one more sample after the last job
            samples = sampler.samples
        start_kib = samples[0][1]
        at20 = _sample_at(samples, 0.2 * (t1 - t0))
        at50 = _sample_at(samples, 0.5 * (t1 - t0))
        end_kib = samples[-1][1]
        peak_kib = max(kib for _, kib in samples)
        growth = (end_kib - at20) / 1024
        second_half = (end_kib - at50) / 1024
        # Flat: the second half of the run adds no more than 2% (or 2 MiB); the first part
        # may still fill the bounded telemetry queues (collector down: 4096 spans and 4096
        # log records wait, then the excess is dropped).
        flat = second_half <= max(2.0, 0.02 * at50 / 1024)
        config = f"1 worker process x concurrency {args.concurrency}, {args.long_jobs} jobs, {label}"
        for metric, kib in (("RSS at start", start_kib), ("RSS after 20% of the run", at20),
                            ("RSS after 50% of the run", at50), ("RSS peak", peak_kib), ("RSS at end", end_kib)):
            env.report.add("memory", "PostgreSQL", config, metric, "MiB", [kib / 1024])
        env.report.add("memory", "PostgreSQL", config, "growth 20% -> end", "MiB", [growth])
        env.report.add("memory", "PostgreSQL", config, "growth 50% -> end", "MiB", [second_half],
                       note="flat" if flat else "GROWING")
        env.report.add("memory", "PostgreSQL", config, "jobs/s", "jobs/s", [result.throughput])
        env.report.extra.setdefault("memory", {})[label] = {"samples": samples, "flat": flat,
                                                            "seconds": result.seconds}


def _sample_at(samples: list[tuple[float, int]], at: float) -> int:
    return min(samples, key=lambda s: abs(s[0] - at))[1]


# -- 5. peers -----------------------------------------------------------------------------


def scenario_peers(env: Env) -> None:
    """Each peer and ours with the same number of worker processes (``--peer-processes``),
    each at the same concurrency, on their own fresh databases of one server; the rounds
    of the three are interleaved in every repetition."""
    env.report.extra["peer_versions"] = peers.versions()
    for processes in env.args.peer_processes:
        _peers_cell(env, processes)


def _peers_cell(env: Env, processes: int) -> None:
    args = env.args
    with postgres_target() as target, fresh_database() as proc_url, fresh_database() as pgq_url:
        urls = {"procrastinate": proc_url, "pgqueuer": pgq_url}
        for name, url in urls.items():
            asyncio.run(peers.install(name, url))
        ours = env.workers(target, processes, args.concurrency, "otlp", f"peers{processes}-ours")
        peer_procs = {
            name: [
                Proc(f"peers{processes}-{name}{i}",
                     python_m("benchmarks.peers", "worker", name, url, str(args.concurrency)), clean_env(), env.log_dir)
                for i in range(processes)
            ]
            for name, url in urls.items()
        }
        everyone = [proc for procs in peer_procs.values() for proc in procs]
        with running(ours), running(everyone):
            for proc in everyone:
                proc.wait_line("ready")
            env.warm_up(target, "otlp", ours)
            for name, url in urls.items():
                peers.peer_round(name, url, jobs=max(20, args.jobs // 10), producers=args.producers, tag="warmup",
                                 check=harness.alive_check(peer_procs[name]))
            values: dict[str, list[float]] = {"ours": [], **{name: [] for name in urls}}
            # CPU per job of each system's processes, ms: worker(s), producer, PostgreSQL.
            cpu: dict[str, dict[str, list[float]]] = {
                name: {"worker": [], "producer": [], "PostgreSQL": []} for name in values
            }
            server = harness.ServerCpu(target.url or "")
            for rep in range(args.repeats):
                result = env.round(target, "otlp", env.spec(args.jobs), ours)
                values["ours"].append(result.throughput)
                _add_cpu(cpu["ours"], result.worker_cpu_ms, result.producer_cpu_ms, result.server_cpu_ms)
                for name, url in urls.items():
                    check = harness.alive_check(peer_procs[name])
                    server_before = server.seconds()
                    workers_before = sum(harness.cpu_seconds(p.pid) for p in peer_procs[name])
                    seconds, _, failed, producer_cpu = peers.peer_round(
                        name, url, jobs=args.jobs, producers=args.producers, tag=f"rep{rep}", check=check
                    )
                    worker_cpu = sum(harness.cpu_seconds(p.pid) for p in peer_procs[name]) - workers_before
                    server_cpu = harness.cpu_delta(server_before, server.seconds())
                    if failed:
                        raise RuntimeError(f"{name}: {failed} jobs failed")
                    values[name].append(args.jobs / seconds)
                    per_job = 1000 / args.jobs
                    _add_cpu(cpu[name], worker_cpu * per_job, producer_cpu * per_job,
                             None if server_cpu is None else server_cpu * per_job)
    plural = "es" if processes > 1 else ""
    config = f"{processes} worker process{plural} x concurrency {args.concurrency}, no-op job"
    versions = env.report.extra["peer_versions"]
    env.report.add("peers", "PostgreSQL", config, "jobs/s, ours (full telemetry, OTLP)", "jobs/s", values["ours"])
    for name in urls:
        env.report.add("peers", "PostgreSQL", config, f"jobs/s, {name} {versions[name]}", "jobs/s", values[name])
    for name in urls:
        ratios = [o / p for o, p in zip(values["ours"], values[name], strict=True)]
        env.report.add("peers", "PostgreSQL", config, f"ours / {name}", "ratio", ratios)
    for name, parts in cpu.items():
        label = "ours" if name == "ours" else f"{name} {versions[name]}"
        for part, ms in parts.items():
            if ms:
                env.report.add("peers", "PostgreSQL", config, f"CPU per job, {label}: {part}", "ms", ms)
        if all(parts.values()):
            totals = [sum(t) for t in zip(*parts.values(), strict=True)]
            env.report.add("peers", "PostgreSQL", config, f"CPU per job, {label}: all three", "ms", totals)


def _add_cpu(parts: dict[str, list[float]], worker: float, producer: float, server: float | None) -> None:
    """One round's CPU per job (ms) of a system's worker processes, producer and
    PostgreSQL server (None: the server is not a process of this machine)."""
    parts["worker"].append(worker)
    parts["producer"].append(producer)
    if server is not None:
        parts["PostgreSQL"].append(server)


# -- 6. ceiling ---------------------------------------------------------------------------


def scenario_ceiling(env: Env) -> None:
    args = env.args
    results = []
    with postgres_target() as target:
        for clients in (1, 4, 16):
            tps = []
            for _ in range(max(1, args.repeats - 1)):
                tps.append(ceiling.pgbench_tps(target.url or "", clients=clients, seconds=args.pgbench_seconds)["tps"])
            row = env.report.add("ceiling", "PostgreSQL", f"pgbench, {clients} client{'s' if clients > 1 else ''}, "
                                 "one job's statements per transaction", "jobs' worth of statements/s", "jobs/s", tps)
            results.append(row.stats["median"])
    best = max(results)
    env.report.extra["ceiling"] = {"best_jobs_per_s": best}
    ours = [r for r in env.report.rows if r.scenario == "throughput" and r.backend == "PostgreSQL"
            and r.config.endswith(", 1 module") and r.metric == "jobs/s"]
    for row in ours:
        env.report.add("ceiling", "PostgreSQL", row.config, "throughput / ceiling", "fraction",
                       [v / best for v in row.stats["values"]], note=f"ceiling {best:.0f} jobs/s")


# -- notify -------------------------------------------------------------------------------


def scenario_notify(env: Env) -> None:
    for writers in (1, 8):
        result = notify_cost.run(writers, env.args.notify_seconds, max(1, env.args.repeats - 1))
        config = f"{writers} concurrent writer{'s' if writers > 1 else ''}"
        without = [result["without_notify"]]
        env.report.add("notify", "PostgreSQL", config, "enqueues/s without NOTIFY", "jobs/s", without)
        env.report.add("notify", "PostgreSQL", config, "enqueues/s with NOTIFY", "jobs/s", [result["with_notify"]])
        env.report.add("notify", "PostgreSQL", config, "with / without", "ratio", [result["ratio"]])


# -- main ---------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Env], None]] = {
    "throughput": scenario_throughput,
    "telemetry": scenario_telemetry,
    "telemetry_cpu": scenario_telemetry_cpu,
    "latency": scenario_latency,
    "memory": scenario_memory,
    "peers": scenario_peers,
    "ceiling": scenario_ceiling,
    "notify": scenario_notify,
    "analysis": lambda env: analysis.run(env.report, env.args, RESULTS, env.log_dir),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(DEFAULT_SCENARIOS), metavar="SCENARIO",
                        help=f"scenarios to run (default: {', '.join(DEFAULT_SCENARIOS)}; also: analysis)")
    analysis.add_arguments(parser)
    parser.add_argument("--jobs", type=int, default=600, help="no-op jobs per round (8-module jobs: half)")
    parser.add_argument("--work-jobs", type=int, default=200, help="work10 jobs per round")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each round")
    parser.add_argument("--long-jobs", type=int, default=5000, help="jobs of each memory run")
    parser.add_argument("--probes", type=int, default=200, help="jobs submitted one at a time for pickup latency")
    parser.add_argument("--probe-gap-ms", type=float, default=100.0,
                        help="pause between two latency probes (long enough that the worker is idle when one arrives)")
    parser.add_argument("--load-rate", type=float, help="jobs/s of the background load (default: half of the "
                        "PostgreSQL throughput measured in this run, or 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs each worker process runs at once")
    parser.add_argument("--producers", type=int, default=4, help="concurrent creating tasks in this process")
    parser.add_argument("--pgbench-seconds", type=float, default=3.0)
    parser.add_argument("--notify-seconds", type=float, default=1.5)
    parser.add_argument("--peer-processes", type=int, nargs="+", default=[1, 4], metavar="N",
                        help="worker processes of ours and of each peer in the peers scenario (default: 1 4)")
    parser.add_argument("--worker-env", nargs="+", default=[], metavar="NAME=VALUE",
                        help="ORCHESTRATOR_* settings for every worker (e.g. ORCHESTRATOR_ANALYSIS_PROCESSES=0)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    harness.interrupt_on_sigterm()
    harness.WORKER_ENV.update(harness.parse_worker_env(args.worker_env))
    configure_logging("WARNING", "json")
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    report = Report(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs" / time.strftime("%Y%m%d-%H%M%S")
    sink = Proc("sink", python_m("benchmarks.sink"), clean_env(), log_dir)
    with running([sink]):
        port = int(sink.wait_line("port").split()[1])
        env = Env(args, report, log_dir, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{closed_port()}")
        report.extra["load_average"] = {"start": os.getloadavg()}
        for name in SCENARIOS:
            if name in args.only:
                started = time.monotonic()
                progress(f"== {name} (load average {os.getloadavg()[0]:.2f})")
                try:
                    RUNNERS[name](env)
                except Exception as exc:  # one scenario failing must not lose the others' numbers
                    log.exception("scenario %s failed", name)
                    report.extra.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
                report.extra.setdefault("scenario_seconds", {})[name] = round(time.monotonic() - started, 1)
                report.extra["load_average"][name] = os.getloadavg()
    with contextlib.suppress(ValueError, IndexError):  # no line: the sink saw nothing (analysis only)
        report.extra["sink"] = json.loads(sink.stop().strip().splitlines()[-1])
    table = report.markdown()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report.to_json(), "markdown": table}, indent=1, default=str))
    progress(f"wrote {args.out} in {report.to_json()['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
