"""Helpers shared by the stack tests (tests/test_stack_static.py, tests/test_prometheus_live.py):
where the stack's files are, how to read the PromQL out of dashboards, rules and datasources,
which metric names exist, and how to find promtool/prometheus (skip outside CI, fail in CI)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from otel.vocabulary import METRICS, MetricKind, prometheus_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "collector-config.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yaml"
GENERATOR = GRAFANA / "generate_dashboards.py"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Metric names a dashboard or rule may use besides the orchestrator's own:
# the collector's internal telemetry (otelcol-contrib 0.159.0, service.telemetry.metrics
# scraped from :8888) and the span_metrics connector's output (namespace traces.span.metrics,
# histogram unit s; collector-config.yaml).
COLLECTOR_METRICS = frozenset(
    f"otelcol_{name}"
    for name in (
        *(
            f"receiver_{state}_{kind}_total"
            for state in ("accepted", "refused", "failed")
            for kind in ("spans", "metric_points", "log_records")
        ),
        *(
            f"exporter_{state}_{kind}_total"
            for state in ("sent", "send_failed", "enqueue_failed")
            for kind in ("spans", "metric_points", "log_records")
        ),
        *(f"processor_{state}_items_total" for state in ("incoming", "outgoing")),
        "exporter_queue_size",
        "exporter_queue_capacity",
        "process_uptime_seconds_total",
        "process_memory_rss_bytes",
        "process_runtime_heap_alloc_bytes",
        "process_cpu_seconds_total",
    )
)
SPAN_METRICS = frozenset(
    {
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds_bucket",
        "traces_span_metrics_duration_seconds_sum",
        "traces_span_metrics_duration_seconds_count",
    }
)

# An identifier starting with one of our prefixes, followed by `{`, `[`, `)`, space or the end.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:orchestrator|otelcol|traces)_[A-Za-z0-9_]*)(?=[{\[)\s]|$)")


def vocabulary_names() -> frozenset[str]:
    """Every Prometheus series name the code can emit (``prometheus_name`` + histogram suffixes)."""
    names: set[str] = set()
    for spec in METRICS:
        base = prometheus_name(spec)
        if spec.kind is MetricKind.HISTOGRAM:
            names.update(base + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(base)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    # Label values and strings may contain anything: drop them first.
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(METRIC_NAME.findall(without_strings))


def unknown_metric_names(expr: str) -> set[str]:
    """The names in ``expr`` that nothing emits (the one-source-of-truth check)."""
    known = vocabulary_names() | COLLECTOR_METRICS | SPAN_METRICS
    return {name for name in metric_names(expr) if name not in known}


# -- dashboards, rules, datasources ----------------------------------------------------


@dataclass(frozen=True)
class Expr:
    where: str  # a human-readable location: file, panel and refId / rule name
    expr: str
    panel: str = ""


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: load_json(path) for path in sorted(DASHBOARDS.glob("*.json"))}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def target_datasource(panel: dict[str, Any], target: dict[str, Any]) -> str:
    source = target.get("datasource") or panel.get("datasource") or {}
    return str(source.get("uid", "")) if isinstance(source, dict) else str(source)


def dashboard_exprs(uid: str = "prometheus") -> list[Expr]:
    """Every query of datasource ``uid`` in every dashboard (PromQL and LogQL in ``expr``,
    TraceQL in ``query``)."""
    found = []
    for name, board in dashboards().items():
        for panel in iter_panels(board["panels"]):
            for target in panel.get("targets", []):
                if target_datasource(panel, target) != uid:
                    continue
                text = target.get("expr") if uid != "tempo" else target.get("query")
                where = f"{name}: panel {panel.get('id')} {panel.get('title')!r} ref {target.get('refId')}"
                found.append(Expr(where, str(text), str(panel.get("title", ""))))
    return found


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules.yml"))


def rule_test_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*_test.yml"))


def rules() -> list[dict[str, Any]]:
    found = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                found.append({**rule, "_file": path.name, "_group": group["name"]})
    return found


def rule_exprs() -> list[Expr]:
    return [Expr(f"{rule['_file']}: {rule.get('alert') or rule.get('record')}", str(rule["expr"])) for rule in rules()]


def datasources() -> dict[str, dict[str, Any]]:
    """Provisioned datasources by uid."""
    return {source["uid"]: source for source in load_yaml(DATASOURCES)["datasources"]}


def provisioning_exprs() -> list[Expr]:
    """PromQL in the datasource provisioning (Tempo's trace-to-metrics queries), with the
    provisioning file's ``$$`` escapes undone."""
    tempo = datasources()["tempo"]["jsonData"]
    return [
        Expr(f"datasources.yaml: tracesToMetrics {query['name']!r}", query["query"].replace("$$", "$"))
        for query in tempo.get("tracesToMetrics", {}).get("queries", [])
    ]


def all_promql() -> list[Expr]:
    return dashboard_exprs("prometheus") + rule_exprs() + provisioning_exprs()


@cache
def generator() -> ModuleType:
    """grafana/generate_dashboards.py, imported from its path (grafana/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_dashboards", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- tools ------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """The path of ``name``; skips with a reason outside CI, fails in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- upstream facts (deploy/upstream-facts, regenerated by its regenerate.py) -------------

FACTS = DEPLOY / "upstream-facts"


def facts(name: str) -> dict[str, Any]:
    """deploy/upstream-facts/<name>.json."""
    return dict(load_json(FACTS / f"{name}.json"))


def unknown_config_keys(document: Any, schema: dict[str, Any]) -> list[str]:
    """Key paths of ``document`` that the config structs in ``schema`` (a tempo.json or
    loki.json) do not have: the keys a strict go-yaml v2 decoder would refuse. A mapping
    given where a struct is expected counts too; values under opaque types are not
    looked into (the program decodes them itself)."""
    structs: dict[str, dict[str, str]] = schema["structs"]
    problems: list[str] = []

    def walk(node: Any, ref: str, path: str) -> None:
        if ref.startswith("list:"):
            for index, item in enumerate(node if isinstance(node, list) else []):
                walk(item, ref[5:], f"{path}[{index}]")
        elif ref.startswith("map:"):
            for key, value in (node if isinstance(node, dict) else {}).items():
                walk(value, ref[4:], f"{path}.{key}" if path else str(key))
        elif ref in structs:
            if not isinstance(node, dict):
                if node is not None:
                    problems.append(f"{path or '<root>'}: a mapping is expected here")
                return
            keys = structs[ref]
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key in keys:
                    walk(value, keys[key], where)
                elif "*" in keys:
                    walk(value, keys["*"], where)
                else:
                    problems.append(where)

    walk(document, schema["root"], "")
    return problems
