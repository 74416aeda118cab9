"""Helpers of the fault-injection suite (not tests).

* a test plugin installed through a real ``orchestrator.modules`` entry point, with
  ``flaky`` (options decide: ok, error, panic, timeout, sleep), ``noop`` and
  ``unserialisable`` (returns what cannot be stored);
* :class:`FaultCluster`: pg_helpers' worker-subprocess cluster with extra environment;
* readers of what the processes exported: spans and metrics from each telemetry
  directory, JSON log lines from each process's output;
* the invariants every scenario checks: one terminal row, legal paths, one root span
  whose lifecycle events are the stored history.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_helpers import Cluster, subprocess_env

from orchestrator.cli.views import Span, load_spans
from orchestrator.domain import TERMINAL, JobStatus, is_legal
from otel.files import SIGNAL_FILES, read_jsonl

PLUGIN_PACKAGE = "orch_fault_modules"

PLUGIN_SOURCE = '''\
"""Fault-injection modules (loaded by entry point)."""

import math
import os

import anyio

from orchestrator import BaseModule, ModuleError


class Flaky(BaseModule):
    """options["mode"]: ok (default), error (ModuleError), panic (RuntimeError),
    timeout (sleeps past its 1 s timeout), sleep (options["seconds"], then ok)."""

    name = "flaky"
    expected_runtime = 0.75
    timeout = 1.0
    description = "fails on demand (test module)"

    async def run(self, context):
        mode = context.options.get("mode", "ok")
        seconds = float(context.options.get("seconds", 0))
        if mode == "error":
            raise ModuleError("flaky: asked to fail", module=self.name)
        if mode == "panic":
            raise RuntimeError("flaky: asked to panic")
        if mode == "timeout":
            await anyio.sleep(30)
        if seconds:
            await anyio.sleep(seconds)
        return {"pid": os.getpid(), "attempt": context.attempt, "mode": mode}


class Noop(BaseModule):
    name = "noop"
    expected_runtime = 1.0
    timeout = 30.0
    description = "does nothing (test module)"

    async def run(self, context):
        return {"pid": os.getpid(), "attempt": context.attempt}


class _Opaque:
    pass


class Unserialisable(BaseModule):
    """Returns a summary that cannot be stored (options["kind"])."""

    name = "unserialisable"
    expected_runtime = 1.0
    timeout = 10.0
    description = "returns junk (test module)"

    async def run(self, context):
        kind = context.options.get("kind", "object")
        if kind == "object":
            return {"value": _Opaque()}
        if kind == "nan":
            return {"value": math.nan}
        if kind == "list":
            return [1, 2, 3]
        if kind == "huge":
            return {"blob": "x" * 2_000_000}
        if kind == "cycle":
            loop = {}
            loop["self"] = loop
            return loop
        return {"bytes": b"\\x00\\xff"}
'''

PLUGIN_METADATA = "Metadata-Version: 2.1\nName: orch-fault-modules\nVersion: 0.0\n"
PLUGIN_ENTRY_POINTS = (
    "[orchestrator.modules]\n"
    f"flaky = {PLUGIN_PACKAGE}:Flaky\n"
    f"noop = {PLUGIN_PACKAGE}:Noop\n"
    f"unserialisable = {PLUGIN_PACKAGE}:Unserialisable\n"
)


def write_plugin(root: Path) -> Path:
    package = root / PLUGIN_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    dist_info = root / f"{PLUGIN_PACKAGE}-0.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(PLUGIN_METADATA)
    (dist_info / "entry_points.txt").write_text(PLUGIN_ENTRY_POINTS)
    return root


def load_plugin_modules(root: Path) -> Any:
    """The plugin imported in this process (not on sys.path: other tests must not see it)."""
    import importlib.util
    import uuid

    spec = importlib.util.spec_from_file_location(
        f"_{PLUGIN_PACKAGE}_{uuid.uuid4().hex[:8]}", root / PLUGIN_PACKAGE / "__init__.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- processes ------------------------------------------------------------------------


@dataclass
class FaultCluster(Cluster):
    """pg_helpers' Cluster, with environment of our own on top of each process's."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, name: str, **settings: object) -> dict[str, str]:
        env = subprocess_env(self.db_url, self.data_dir(name), self.plugin_dir, **settings)
        env.update(self.extra_env)
        return env


def embedded_env(data_dir: Path, plugin_dir: Path | None = None, **settings: object) -> dict[str, str]:
    """The environment of an ``orchestrator`` subprocess on the embedded default (SQLite
    and telemetry files in ``data_dir``), the plugin on PYTHONPATH when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OTEL_"))}
    if plugin_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["ORCHESTRATOR_DATA_DIR"] = str(data_dir)
    env["ORCHESTRATOR_LOG_FORMAT"] = "json"
    for name, value in settings.items():
        env[f"ORCHESTRATOR_{name.upper()}"] = str(value)
    return env


ORCHESTRATOR_CMD = [sys.executable, "-m", "orchestrator"]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (from /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- what the processes wrote ----------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log records of a process's output (other lines skipped)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def events_named(records: Iterable[Mapping[str, Any]], *names: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("event") in names]


def spans_of(dirs: Iterable[Path]) -> list[Span]:
    return [s for d in dirs for s in load_spans(d)]


def last_metrics(telemetry_dir: Path) -> dict[str, dict[str, Any]]:
    """The last ExportMetricsServiceRequest of each process (by service.instance.id)
    that wrote to ``telemetry_dir``: cumulative, so the last holds the process's totals."""
    last: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(telemetry_dir / SIGNAL_FILES["metrics"]):
        for rm in record.get("resourceMetrics", []):
            attrs = {a["key"]: _attr_value(a.get("value", {})) for a in rm.get("resource", {}).get("attributes", [])}
            last[str(attrs.get("service.instance.id"))] = {"resourceMetrics": [rm]}
    return last


def _attr_value(value: Mapping[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def metric_sums(requests: Iterable[Mapping[str, Any]], name: str, *keys: str) -> Counter[tuple[Any, ...]]:
    """A counter's values summed over metrics requests, keyed by the given attribute values."""
    totals: Counter[tuple[Any, ...]] = Counter()
    for rm in (rm for request in requests for rm in request.get("resourceMetrics", [])):
        for sm in rm.get("scopeMetrics", []):
            for metric in sm.get("metrics", []):
                if metric.get("name") != name:
                    continue
                for point in metric.get("sum", {}).get("dataPoints", []):
                    attrs = {a["key"]: _attr_value(a.get("value", {})) for a in point.get("attributes", [])}
                    value = int(point["asInt"]) if "asInt" in point else float(point.get("asDouble", 0))
                    totals[tuple(attrs.get(k) for k in keys)] += value
    return totals


# -- invariants -----------------------------------------------------------------------


TERMINAL_NAMES = frozenset(str(s) for s in TERMINAL)


def path_problems(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why a job's history rows are not a legal path through TRANSITIONS (empty: legal).

    Rows are dicts with status_from, status_to (strings or None), in order. A cancel
    request (running -> running, event job.lifecycle.cancel_requested) is recorded beside
    the path: it must be of a running job, and is not a step of the path."""
    problems = []
    requests = [r for r in history if r["status_from"] is not None and r["status_from"] == r["status_to"]]
    problems += [f"a request on a {r['status_to']} job" for r in requests if r["status_to"] != "running"]
    history = [r for r in history if r not in requests]
    if not history:
        return ["no history"]
    first = history[0]
    if (first["status_from"], first["status_to"]) != (None, "pending"):
        problems.append(f"first row {first['status_from']}->{first['status_to']}, not None->pending")
    for previous, row in itertools.pairwise(history):
        if row["status_from"] != previous["status_to"]:
            problems.append(f"row {row['status_from']}->{row['status_to']} after ->{previous['status_to']}")
        elif not is_legal(JobStatus(row["status_from"]), JobStatus(row["status_to"])):
            problems.append(f"illegal {row['status_from']}->{row['status_to']}")
    terminals = [r for r in history if r["status_to"] in TERMINAL_NAMES]
    if len(terminals) != 1:
        problems.append(f"{len(terminals)} terminal rows")
    elif history[-1] is not terminals[0]:
        problems.append("rows after the terminal one")
    return problems


def lifecycle_of(root: Span) -> list[tuple[str, str, str]]:
    return [
        (str(e.attributes.get("status_from")), str(e.attributes.get("status_to")), str(e.attributes.get("reason")))
        for e in root.events
        if e.name.startswith("job.lifecycle.")
    ]


def stored_lifecycle(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    return [(str(h["status_from"] or "none"), str(h["status_to"]), str(h["reason"])) for h in history]


def roots_by_job(spans: Iterable[Span]) -> dict[str, list[Span]]:
    found: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        if s.name == "job" and not s.parent_id:
            found[str(s.attributes.get("job_id"))].append(s)
    return found


def group_history(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """History rows (ordered by job_id, seq) grouped by job."""
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["job_id"]].append(row)
    return grouped


def figures(title: str, values: Mapping[str, Any]) -> None:
    """Print a test's measured figures (run pytest with -s to see them)."""
    width = max(len(k) for k in values)
    lines = [f"  {k:<{width}} : {v}" for k, v in values.items()]
    print(f"\n[faults] {title}\n" + "\n".join(lines), flush=True)


def iter_dirs(root: Path, pattern: str) -> Iterator[Path]:
    yield from sorted(p for p in root.glob(pattern) if p.is_dir())
