"""The ``analysis`` scenario: the built-in modules on real trees, against anchors.

Trees (built once under ``benchmarks/results/trees/`` or found on the machine):

* ``site-packages``: this virtualenv's site-packages (real Python, C extensions, data);
* ``synthetic-100k``: ``--analysis-files`` small files (Python, JavaScript, Markdown, text)
  in nested packages, deterministic content with TODOs and credential-shaped strings;
* ``large-files``: a few text and binary files of tens of MB each;
* ``/usr``: the machine's own (121k files here), the "real size" tree of issue 16.

For each tree, side by side in one run: the whole job (all five modules) with telemetry
off and on, through ``orchestrator run`` in a subprocess (job time from the stored
Running -> Completed timestamps, peak RSS of the process tree, overruns); on
site-packages each module alone and ``secrets`` + ``todos`` together; and the anchors:
the read-all floor (one Python loop reading every indexed file and counting its lines),
the single-threaded ``ast.parse`` floor (read and parse every indexed Python file), cloc
and ripgrep (Debian packages; skipped with a note when absent). In-process on the largest
tree: progress updates while it runs, and how long a cancelled job takes to stop.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio

from orchestrator.bootstrap import open_app
from orchestrator.domain import JobStatus
from orchestrator.modules.index import FileIndex, build_index
from orchestrator.modules.progress import ModuleProgress
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from orchestrator.usecases import CancelKind, JobControl

__all__ = ["add_arguments", "run"]

MODULES = ("dependencies", "inventory", "python_syntax", "secrets", "todos")
SCENARIO = "analysis"
#: The patterns ripgrep runs, as the secrets and todos modules look for them.
RG_PATTERNS = (
    r"\b(TODO|FIXME|XXX|HACK)\b",
    r"A(KIA|SIA)[0-9A-Z]{16}",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY",
    r"gh[pousr]_[A-Za-z0-9]{36}",
    r"xox[baprs]-[A-Za-z0-9-]{10,}",
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ",
    "(?i)(passw(or)?d|secret|token|api[_-]?key)[\\w.-]{0,64}[\"']?\\s*[:=]\\s*[\"'][^\"'\\r\\n]{8,}[\"']",
)
TOOL_TIMEOUT = 600.0
#: Below this many Python files the ast.parse floor is not an anchor (large-files has one).
MIN_PYTHON_FILES = 100


class Report(Protocol):
    def add(self, scenario: str, backend: str, config: str, metric: str, unit: str, values: Sequence[float],
            note: str = "") -> Any: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--analysis-files", type=int, default=100_000, help="files of the synthetic tree")
    parser.add_argument("--analysis-trees", nargs="+", default=["site-packages", "synthetic", "large", "usr"],
                        choices=["site-packages", "synthetic", "large", "usr"], help="trees of the analysis scenario")


# -- trees --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    name: str
    path: Path


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def synthetic_tree(root: Path, files: int) -> Path:
    """``files`` small files in packages of 100, built once (a marker records the size)."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(files):
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(16)
    words = ["alpha", "beta", "gamma", "queue", "cache", "token", "value", "request", "handler", "service"]
    kinds = [(".py", "#"), (".js", "//"), (".md", "<!--"), (".txt", "")]
    for index in range(files):
        suffix, comment = kinds[index % len(kinds)]
        path = root / f"pkg{index // 10_000:02}/sub{index // 100 % 100:02}/f{index:06}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(rng.randint(5, 40))]
        if suffix == ".py":
            lines = [f"VALUE_{n} = {line!r}" for n, line in enumerate(lines)]
        if index % 7 == 0 and comment:
            lines.append(f"{comment} TODO: {rng.choice(words)}")
        if index % 997 == 0:
            lines.append(f'api_key = "{rng.getrandbits(64):016x}{rng.getrandbits(32):08x}"')
        path.write_text("\n".join(lines) + "\n")
    marker.write_text(str(files))
    return root


def large_tree(root: Path, *, text_files: int = 6, binary_files: int = 2, megabytes: int = 40) -> Path:
    marker = root / ".complete"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    line = b"2026-11-30T12:00:00Z INFO request handled in 12 ms (TODO: trim this log line) path=/v1/jobs\n"
    for index in range(text_files):
        with (root / f"log{index}.txt").open("wb") as handle:
            for _ in range(megabytes * 1_000_000 // len(line)):
                handle.write(line)
    chunk = bytes(range(256)) * 4096
    for index in range(binary_files):
        with (root / f"blob{index}.bin").open("wb") as handle:
            for _ in range(megabytes * 1_000_000 // len(chunk)):
                handle.write(chunk)
    (root / "small.py").write_text("# TODO: one small file too\nx = 1\n")
    marker.write_text("done")
    return root


def trees(args: argparse.Namespace, workdir: Path) -> list[Tree]:
    found: list[Tree] = []
    for name in args.analysis_trees:
        if name == "site-packages":
            found.append(Tree("site-packages", site_packages()))
        elif name == "synthetic":
            found.append(Tree(f"synthetic-{args.analysis_files // 1000}k", synthetic_tree(
                workdir / f"synthetic-{args.analysis_files}", args.analysis_files)))
        elif name == "large":
            found.append(Tree("large-files", large_tree(workdir / "large-files")))
        elif name == "usr" and Path("/usr").is_dir():
            found.append(Tree("/usr", Path("/usr")))
    return found


# -- anchors ------------------------------------------------------------------------------


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (and theirs), so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    wall: float
    cpu: float


def read_all_floor(index: FileIndex) -> Timed:
    """One Python loop: read every indexed file, count its lines (what the index keeps)."""
    started, cpu, lines = time.perf_counter(), time.process_time(), 0
    for entry in index:
        try:
            with open(os.path.join(entry.root, entry.relpath), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    lines += chunk.count(b"\n")
        except OSError:
            continue
    return Timed(time.perf_counter() - started, time.process_time() - cpu)


def ast_parse_floor(index: FileIndex, max_bytes: int = 5_000_000) -> tuple[Timed, int]:
    """Read and ``ast.parse`` every indexed Python file, single-threaded."""
    started, cpu, parsed = time.perf_counter(), time.process_time(), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in index:
            if entry.suffix not in (".py", ".pyi") or entry.size > max_bytes:
                continue
            try:
                with open(os.path.join(entry.root, entry.relpath), "rb") as handle:
                    ast.parse(handle.read(), entry.relpath)
                parsed += 1
            except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
                continue
    return Timed(time.perf_counter() - started, time.process_time() - cpu), parsed


def timed_tool(argv: list[str]) -> Timed | None:
    """Wall and CPU seconds ``argv`` took (None if it failed or timed out)."""
    started, cpu = time.perf_counter(), children_cpu()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode not in (0, 1):  # rg: 1 = no match
        return None
    return Timed(time.perf_counter() - started, children_cpu() - cpu)


# -- the job through the CLI --------------------------------------------------------------


@dataclass
class JobRun:
    status: str
    job_seconds: float
    wall_seconds: float
    #: CPU of the whole process tree (the CLI and its worker processes), start-up included.
    cpu_seconds: float
    peak_rss_mib: float
    modules: dict[str, dict[str, Any]]
    reason: str


def _tree_rss_kib(pid: int) -> int:
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue
    return total


def _seconds(start: str, end: str) -> float:
    parse: Callable[[str], datetime] = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def run_job(source: Path, modules: Sequence[str] | None, *, telemetry: bool, log_dir: Path) -> JobRun:
    """``orchestrator run`` on ``source`` in a subprocess of its own (own data dir)."""
    with tempfile.TemporaryDirectory(prefix="analysis-bench-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
        env["ORCHESTRATOR_DATA_DIR"] = data
        if not telemetry:
            env["OTEL_SDK_DISABLED"] = "true"
        argv = [sys.executable, "-m", "orchestrator", "run", "--source", str(source), "--project-id", "bench", "--json"]
        if modules:
            argv += ["--modules", ",".join(modules)]
        peak = [0]
        stop = threading.Event()
        started, cpu = time.perf_counter(), children_cpu()
        with (log_dir / "analysis-run.log").open("ab") as log:
            process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log)

            def sample() -> None:
                while not stop.wait(0.2):
                    peak[0] = max(peak[0], _tree_rss_kib(process.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            out, _ = process.communicate(timeout=3600)
            stop.set()
            sampler.join()
        wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    job = json.loads(out)
    results = {r["module"]: r for r in job["results"]}
    return JobRun(job["status"], _seconds(job["started_at"], job["finished_at"]), wall, cpu, peak[0] / 1024,
                  results, job.get("reason") or "")


# -- cancel and progress, in-process ------------------------------------------------------


@dataclass
class CancelProbe:
    first_progress_s: float | None
    updates: int
    stopped_s: float
    status: str
    busy_after: int


async def cancel_probe(source: Path, *, after_fraction: float = 0.2) -> CancelProbe:
    """Start a whole job, wait until a module is ``after_fraction`` through its files,
    cancel it and time how long until the job is Cancelled with no worker busy."""
    updates: list[ModuleProgress] = []
    reached = anyio.Event()
    started = time.monotonic()
    first: list[float] = []

    def listener(update: ModuleProgress) -> None:
        updates.append(update)
        if not first:
            first.append(time.monotonic() - started)
        if update.total and update.done >= after_fraction * update.total:
            reached.set()

    with tempfile.TemporaryDirectory(prefix="analysis-cancel-") as data:
        async with open_app(Settings(data_dir=Path(data)), telemetry=JobTelemetry()) as app:
            app.execute.add_progress_listener(listener)
            await app.create.execute({"project_id": "bench", "source": str(source)})
            running = await app.workflow.claim("bench", lease_seconds=3600)
            assert running is not None
            control = JobControl()
            final: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def execute() -> None:
                    final.append(await app.execute.execute(running, control=control, worker_id="bench"))

                tg.start_soon(execute)
                with anyio.fail_after(1800):
                    await reached.wait()
                cancelled_at = time.monotonic()
                control.cancel(CancelKind.USER, "benchmark cancel")
            stopped = time.monotonic() - cancelled_at
            pool = getattr(app.execute._batch_runner(), "pool", None)  # a measurement of the pool
            busy = _busy_workers(pool.pids if pool is not None else [])
    return CancelProbe(first[0] if first else None, len(updates), stopped, str(final[0].status), busy)


def _busy_workers(pids: Sequence[int], window: float = 0.5) -> int:
    """Pool workers that used CPU during ``window`` seconds after the cancel."""

    def cpu(pid: int) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0

    before = {pid: cpu(pid) for pid in pids}
    time.sleep(window)
    return sum(1 for pid in pids if cpu(pid) > before[pid])


# -- the scenario -------------------------------------------------------------------------


def run(report: Report, args: argparse.Namespace, results_dir: Path, log_dir: Path) -> None:
    add = report.add
    log_dir.mkdir(parents=True, exist_ok=True)
    found = trees(args, results_dir / "trees")
    repeats = max(1, args.repeats)
    for tree in found:
        index = build_index(tree.path)
        size = f"{len(index):,} files, {index.total_bytes / 1e6:,.0f} MB"
        small = len(index) < 50_000
        reps = repeats if small else 1
        add(SCENARIO, tree.name, size, "ignored by default (entries)", "count", [index.stats.ignored])
        read_floor = [read_all_floor(index) for _ in range(reps)]
        add(SCENARIO, tree.name, "anchor", "read-all floor (1 Python loop)", "s", [t.wall for t in read_floor])
        _anchor_tools(add, tree)
        # The ast.parse floor is measured right before each whole job, and the ratio taken
        # per pair: on a shared machine the load moves from one minute to the next.
        parse_floor: list[Timed] = []
        parsed = 0
        for telemetry in (False, True):
            runs = []
            for _ in range(reps):
                if not telemetry:
                    timed, parsed = ast_parse_floor(index)
                    parse_floor.append(timed)
                runs.append(run_job(tree.path, None, telemetry=telemetry, log_dir=log_dir))
            config = f"whole job, telemetry {'on (files)' if telemetry else 'off'}"
            _job_rows(add, tree.name, config, runs)
            if not telemetry:
                whole = [r.job_seconds for r in runs]
                _ratio(add, tree.name, "whole job / read-all floor (wall)", whole, [t.wall for t in read_floor])
                if parsed < MIN_PYTHON_FILES:
                    continue  # no Python to speak of: the parse floor is no anchor here
                add(SCENARIO, tree.name, "anchor", f"ast.parse floor (1 thread, {parsed:,} files)", "s",
                    [t.wall for t in parse_floor])
                add(SCENARIO, tree.name, "anchor", "ast.parse floor CPU", "s", [t.cpu for t in parse_floor])
                _ratio(add, tree.name, "whole job / ast.parse floor (wall, paired)", whole,
                       [t.wall for t in parse_floor])
                _ratio(add, tree.name, "whole job CPU / ast.parse floor CPU", [r.cpu_seconds for r in runs],
                       [t.cpu for t in parse_floor])
        if tree.name == "site-packages":
            for module in MODULES:
                runs = [run_job(tree.path, [module], telemetry=False, log_dir=log_dir) for _ in range(reps)]
                add(SCENARIO, tree.name, f"{module} alone", "job time", "s", [r.job_seconds for r in runs])
                add(SCENARIO, tree.name, f"{module} alone", "CPU, process tree with start-up", "s",
                    [r.cpu_seconds for r in runs])
            runs = [run_job(tree.path, ["secrets", "todos"], telemetry=False, log_dir=log_dir) for _ in range(reps)]
            add(SCENARIO, tree.name, "secrets + todos", "job time (target <= 1 s)", "s", [r.job_seconds for r in runs])
            add(SCENARIO, tree.name, "secrets + todos", "CPU, process tree with start-up", "s",
                [r.cpu_seconds for r in runs])
    if found:
        biggest = max(found, key=lambda t: len(build_index(t.path)))
        probe = anyio.run(cancel_probe, biggest.path)
        add(SCENARIO, biggest.name, "whole job, cancelled at 20 %", "cancel -> job stopped (target < 1 s)", "ms",
            [probe.stopped_s * 1000], note=f"{probe.status}, {probe.busy_after} pool worker(s) busy after")
        if probe.first_progress_s is not None:
            add(SCENARIO, biggest.name, "whole job", "first progress update after", "s", [probe.first_progress_s])
        add(SCENARIO, biggest.name, "whole job, until 20 %", "progress updates received", "count", [probe.updates])


def _anchor_tools(add: Callable[..., Any], tree: Tree) -> None:
    if shutil.which("cloc"):
        timed = timed_tool(["cloc", "--quiet", "--json", str(tree.path)])
        add(SCENARIO, tree.name, "anchor", "cloc", "s", [timed.wall] if timed else [],
            note=f"CPU {timed.cpu:.1f} s" if timed else f"failed or over {TOOL_TIMEOUT:.0f} s")
    else:
        add(SCENARIO, tree.name, "anchor", "cloc", "s", [], note="not installed (apt-get install cloc)")
    if shutil.which("rg"):
        argv = ["rg", "--count", "--no-messages", *(arg for p in RG_PATTERNS for arg in ("-e", p)), str(tree.path)]
        timed = timed_tool(argv)
        add(SCENARIO, tree.name, "anchor", "ripgrep (TODO + credential patterns)", "s",
            [timed.wall] if timed else [], note=f"CPU {timed.cpu:.1f} s" if timed else "failed")
    else:
        add(SCENARIO, tree.name, "anchor", "ripgrep", "s", [], note="not installed (apt-get install ripgrep)")


def _job_rows(add: Callable[..., Any], tree: str, config: str, runs: Sequence[JobRun]) -> None:
    statuses = sorted({r.status for r in runs})
    failed = [r.reason for r in runs if r.status != str(JobStatus.COMPLETED)]
    overruns = sorted({m for r in runs for m, res in r.modules.items() if res.get("overran")})
    note = ", ".join(statuses) + (f"; overran: {', '.join(overruns)}" if overruns else "; no overrun")
    if failed:
        note += f"; {failed[0][:120]}"
    add(SCENARIO, tree, config, "job time (Running -> Completed)", "s", [r.job_seconds for r in runs], note=note)
    add(SCENARIO, tree, config, "orchestrator run wall time", "s", [r.wall_seconds for r in runs])
    add(SCENARIO, tree, config, "CPU, process tree with start-up", "s", [r.cpu_seconds for r in runs])
    add(SCENARIO, tree, config, "peak RSS (process tree)", "MiB", [r.peak_rss_mib for r in runs])
    for module in MODULES:
        durations = [r.modules[module]["duration_ms"] / 1000 for r in runs if module in r.modules]
        expected = [r.modules[module]["expected_ms"] / 1000 for r in runs if module in r.modules]
        add(SCENARIO, tree, config, f"{module} (expected {expected[0]:.1f} s)", "s", durations)


def _ratio(add: Callable[..., Any], tree: str, name: str, ours: Sequence[float], anchor: Sequence[float]) -> None:
    ratios = [a / b for a, b in zip(ours, anchor, strict=False) if b]
    add(SCENARIO, tree, "ratio", name, "ratio", ratios)
