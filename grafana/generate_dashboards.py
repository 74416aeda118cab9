#!/usr/bin/env python3
"""Writes the Grafana dashboards in ``grafana/dashboards`` from ``otel/vocabulary.py``.

Every metric name, label and span attribute in the dashboards comes from the telemetry
vocabulary, so a renamed metric changes the dashboards with it (and
``tests/test_stack_static.py`` fails until the committed JSON is regenerated)::

    .venv/bin/python grafana/generate_dashboards.py          # rewrite the JSON files
    .venv/bin/python grafana/generate_dashboards.py --check  # exit 1 when they are stale

Two dashboards:

* ``orchestrator-operations.json`` - the four operational questions (which phase fails
  most, which module overruns, transition/persistence failures vs module logic, time in
  each phase), throughput, in-flight jobs, queue depth, webhooks, recent failed jobs
  from Tempo, and the telemetry pipeline itself.
* ``orchestrator-job.json`` - one job (a ``job_id`` textbox): its trace, its module
  runs, its logs and its lifecycle events.

PromQL conventions: panels over time use ``rate(...[$__rate_interval])``; panels that
total the dashboard's time range use :func:`window_increase`, which also counts a
counter series born inside the range (a counter appears with its first increment, which
a plain ``increase()`` cannot see).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from orchestrator.domain import ErrorCategory  # noqa: E402
from otel.vocabulary import Attr, Metric, MetricKind, MetricSpec, SpanName, prometheus_name  # noqa: E402

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 41

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
TEMPO = {"type": "tempo", "uid": "tempo"}
LOKI = {"type": "loki", "uid": "loki"}

RANGE = "$__range"
RATE = "$__rate_interval"
SERVICE = "orchestrator"

OPERATIONS_UID = "orchestrator-operations"
JOB_UID = "orchestrator-job"

# Error categories grouped for question 3 (from the domain's enum: one source of truth).
PLATFORM_CATEGORIES = (ErrorCategory.TRANSITION, ErrorCategory.PERSISTENCE)
MODULE_CATEGORIES = (ErrorCategory.MODULE, ErrorCategory.MODULE_TIMEOUT, ErrorCategory.MODULE_PANIC)

# Panel titles the live test (tests/test_prometheus_live.py) looks panels up by.
Q1_FAILURES_BY_PHASE = "Failures by phase (most-failing first)"
Q2_OVERRUNS_BY_MODULE = "Overruns per module (most first)"
Q2_MODULES_TABLE = "Modules against their expected runtime"
Q3_FAILURES_BY_CATEGORY = "Failures by error category"
Q3_PLATFORM_VS_MODULE = "Transition/persistence errors vs module logic"
Q4_PHASE_TABLE = "Time in each phase over the range"


# -- PromQL helpers --------------------------------------------------------------------


def metric(spec: MetricSpec, suffix: str = "") -> str:
    """The Prometheus name of ``spec``; histograms need a ``_bucket``/``_sum``/``_count`` suffix."""
    if (spec.kind is MetricKind.HISTOGRAM) != bool(suffix):
        raise ValueError(f"{spec.name}: histograms (and only they) take a suffix, got {suffix!r}")
    return prometheus_name(spec) + suffix


def selector(name: str, **matchers: str) -> str:
    """``name{label="value", label=~"regex"}``: a value starting with ``~`` is a regex match,
    ``!~`` a negative one."""
    if not matchers:
        return name
    parts = []
    for label, value in matchers.items():
        if value.startswith("!~"):
            parts.append(f'{label}!~"{value[2:]}"')
        elif value.startswith("~"):
            parts.append(f'{label}=~"{value[1:]}"')
        else:
            parts.append(f'{label}="{value}"')
    return f"{name}{{{', '.join(parts)}}}"


def window_increase(sel: str, window: str = RANGE) -> str:
    """The increase of the counter series ``sel`` over ``window``, counting a series born
    inside the window (first seen with its first increment) with its whole value."""
    return f"(({sel} unless {sel} offset {window}) or increase({sel}[{window}]))"


def regex(values: Iterable[str]) -> str:
    return "|".join(str(v) for v in values)


FAILURES = metric(Metric.FAILURES)
OVERRUNS = metric(Metric.MODULE_OVERRUNS)
EXPECTED = metric(Metric.MODULE_EXPECTED)
MODULE_BUCKET = metric(Metric.MODULE_DURATION, "_bucket")
MODULE_COUNT = metric(Metric.MODULE_DURATION, "_count")
PHASE_BUCKET = metric(Metric.PHASE_DURATION, "_bucket")
PHASE_SUM = metric(Metric.PHASE_DURATION, "_sum")
PHASE_COUNT = metric(Metric.PHASE_DURATION, "_count")
JOB_BUCKET = metric(Metric.JOB_DURATION, "_bucket")
JOB_COUNT = metric(Metric.JOB_DURATION, "_count")
QUEUE_BUCKET = metric(Metric.QUEUE_WAIT, "_bucket")
ACTIVE = metric(Metric.ACTIVE_JOBS)
QUEUE_DEPTH = metric(Metric.QUEUE_DEPTH)
TRANSITIONS = metric(Metric.TRANSITIONS)
RECOVERIES = metric(Metric.RECOVERIES)
WEBHOOKS = metric(Metric.WEBHOOK_DELIVERIES)
WEBHOOK_BUCKET = metric(Metric.WEBHOOK_LATENCY, "_bucket")
EXPORT_FAILURES = metric(Metric.TELEMETRY_EXPORT_FAILURES)
RECONSTRUCTED = metric(Metric.TRACES_RECONSTRUCTED)

PHASE, MODULE, CATEGORY, STATUS, OUTCOME = Attr.PHASE, Attr.MODULE, Attr.ERROR_CATEGORY, Attr.STATUS, Attr.OUTCOME


def quantile(q: float, bucket: str, by: Iterable[str], window: str = RATE) -> str:
    labels = ", ".join([*by, "le"])
    return f"histogram_quantile({q}, sum by ({labels}) (rate({bucket}[{window}])))"


def range_quantile(q: float, bucket: str, by: Iterable[str]) -> str:
    labels = ", ".join([*by, "le"])
    return f"histogram_quantile({q}, sum by ({labels}) ({window_increase(bucket)}))"


# -- Grafana JSON helpers --------------------------------------------------------------


def prom(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    exemplar: bool = False,
) -> dict[str, Any]:
    """A PromQL query. Instant queries come back as tables (one row per series, for bar
    gauges and tables); :func:`stat` turns them back into one series per value."""
    return {
        "datasource": PROMETHEUS,
        "refId": ref,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if instant else "time_series",
        "exemplar": exemplar,
    }


def tempo(query: str, *, limit: int = 20, table: str = "traces", spss: int = 3) -> dict[str, Any]:
    return {
        "datasource": TEMPO,
        "refId": "A",
        "queryType": "traceql",
        "query": query,
        "limit": limit,
        "tableType": table,
        "spss": spss,
    }


def loki(expr: str) -> dict[str, Any]:
    return {"datasource": LOKI, "refId": "A", "editorMode": "code", "expr": expr, "queryType": "range"}


def explore_url(datasource: dict[str, str], query: dict[str, Any], value: str = "${__value.raw}") -> str:
    """A Grafana Explore link over the dashboard's time range; ``VALUE`` in ``query``
    becomes ``value`` (by default ``${__value.raw}``, the clicked cell)."""
    panes = {
        "a": {
            "datasource": datasource["uid"],
            "queries": [{"refId": "A", "datasource": datasource, **query}],
            "range": {"from": "FROM_MARKER", "to": "TO_MARKER"},
        }
    }
    encoded = urllib.parse.quote(json.dumps(panes, separators=(",", ":")), safe="")
    for marker, variable in (("VALUE", value), ("FROM_MARKER", "${__from}"), ("TO_MARKER", "${__to}")):
        encoded = encoded.replace(marker, variable)
    return "/explore?schemaVersion=1&panes=" + encoded


# Which field of a Tempo table frame carries the links, and what gives the trace id
# (the frames Grafana's Tempo data source builds, deploy/upstream-facts/grafana.json):
# a `traces` table has a visible traceID field; a `spans` table keeps the trace id in a
# hidden traceIdHidden field, so the links go on spanID and read the id from that field.
LINK_FIELD = {"traces": ("traceID", "${__value.raw}"), "spans": ("spanID", "${__data.fields.traceIdHidden}")}
# Tempo's search may drop a trace id's leading zeros while Loki stores all 32 hex digits
# (deploy/tempo/tempo.yaml pads them with left_pad_trace_ids); `0*` matches either way.
TRACE_ID_IN_LOKI = 'trace_id=~"0*VALUE"'


def trace_links(table: str) -> list[dict[str, str]]:
    """"Open the trace" and "Logs of this trace" for a Tempo table of type ``table``."""
    _, trace_id = LINK_FIELD[table]
    return [
        {
            "title": "Open the trace",
            "url": explore_url(TEMPO, {"queryType": "traceql", "query": "VALUE"}, trace_id),
        },
        {
            "title": "Logs of this trace",
            "url": explore_url(LOKI, {"expr": f'{{service_name="{SERVICE}"}} | {TRACE_ID_IN_LOKI}'}, trace_id),
        },
    ]


class Layout:
    """Assigns unique panel ids and grid positions, left to right, top to bottom."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_height = 0

    def _id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x = 0
            self._row_height = 0

    def add(self, panel: dict[str, Any], *, w: int, h: int) -> dict[str, Any]:
        if self._x + w > 24:
            self._newline()
        panel = {"id": self._id(), **panel, "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y}}
        self.panels.append(panel)
        self._x += w
        self._row_height = max(self._row_height, h)
        return panel


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    *,
    unit: str,
    description: str,
    overrides: list[dict[str, Any]] | None = None,
    datasource: dict[str, str] = PROMETHEUS,
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": datasource,
        "targets": _refs(targets),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"},
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def ranked_bars(title: str, target: dict[str, Any], *, label: str, unit: str, description: str) -> dict[str, Any]:
    """A horizontal bar per label value of an instant table query, largest first."""
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": _refs([target]),
        "transformations": [
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "Value", "desc": True}]}},
        ],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "displayName": f"${{__data.fields.{label}}}",
                "min": 0,
                "color": {"mode": "continuous-GrYlRd"},
            },
            "overrides": [],
        },
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "reduceOptions": {"values": True, "calcs": ["lastNotNull"], "fields": "/^Value$/"},
        },
    }


def stat(title: str, targets: list[dict[str, Any]], *, unit: str, description: str) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        # One value per series, named by its legend: time_series format, not table.
        "targets": [{**target, "format": "time_series"} for target in _refs(targets)],
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 0}, "overrides": []},
        "options": {
            "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "auto",
        },
    }


def merged_table(title: str, key: str, columns: list[tuple[str, str, str]], *, description: str) -> dict[str, Any]:
    """One row per ``key`` label value; each column is (header, instant PromQL, unit)."""
    targets = [prom(expr, ref=chr(ord("A") + i), instant=True) for i, (_, expr, _) in enumerate(columns)]
    rename = {f"Value #{chr(ord('A') + i)}": header for i, (header, _, _) in enumerate(columns)}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "indexByName": {key: 0}, "renameByName": rename},
            },
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": columns[0][0], "desc": True}]}},
        ],
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto"}},
            "overrides": [
                {"matcher": {"id": "byName", "options": header}, "properties": [{"id": "unit", "value": unit}]}
                for header, _, unit in columns
            ],
        },
        "options": {"showHeader": True, "sortBy": [{"displayName": columns[0][0], "desc": True}]},
    }


# Tempo 3.0 leaves the newest spans out of search (query_frontend.query_end_cutoff, 30s
# by default; deploy/tempo/tempo.yaml keeps it).
SEARCH_CUTOFF_NOTE = " Tempo's search leaves out the newest 30 s of spans."


def trace_table(title: str, query: str, *, description: str, table: str = "traces", spss: int = 3) -> dict[str, Any]:
    field, _ = LINK_FIELD[table]
    return {
        "type": "table",
        "title": title,
        "description": description + SEARCH_CUTOFF_NOTE,
        "datasource": TEMPO,
        "targets": [tempo(query, table=table, spss=spss)],
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto"}},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": field},
                    "properties": [{"id": "links", "value": trace_links(table)}],
                }
            ],
        },
        "options": {"showHeader": True},
    }


def logs(title: str, expr: str, *, description: str) -> dict[str, Any]:
    return {
        "type": "logs",
        "title": title,
        "description": description,
        "datasource": LOKI,
        "targets": [loki(expr)],
        "options": {
            "showTime": True,
            "wrapLogMessage": True,
            "enableLogDetails": True,
            "sortOrder": "Ascending",
            "dedupStrategy": "none",
            "prettifyLogMessage": False,
        },
    }


def _refs(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def dashed(pattern: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict[str, Any]],
    *,
    variables: list[dict[str, Any]] | None = None,
    links: list[dict[str, Any]] | None = None,
    time_from: str = "now-1h",
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["orchestrator", "opentelemetry"],
        "editable": False,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": links or [],
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "panels": panels,
    }


# -- the dashboards --------------------------------------------------------------------


def operations() -> dict[str, Any]:
    layout = Layout()
    failures_range = window_increase(FAILURES)
    platform = regex(PLATFORM_CATEGORIES)
    module_logic = regex(MODULE_CATEGORIES)

    layout.row("Throughput")
    layout.add(
        stat(
            "Jobs finished",
            [prom(f"sum by ({STATUS}) ({window_increase(JOB_COUNT)})", f"{{{{{STATUS}}}}}", instant=True)],
            unit="short",
            description="Jobs that reached a terminal status in the time range, by status.",
        ),
        w=8,
        h=6,
    )
    layout.add(
        stat(
            "In-flight jobs",
            [prom(f"sum({ACTIVE})", "running", instant=True)],
            unit="short",
            description="Jobs being executed right now, summed over every worker.",
        ),
        w=4,
        h=6,
    )
    layout.add(
        stat(
            "Queue depth",
            [prom(f"max({QUEUE_DEPTH})", "queued", instant=True)],
            unit="short",
            description="Jobs waiting for a worker (every worker reports the same queue: max, not sum).",
        ),
        w=4,
        h=6,
    )
    layout.add(
        timeseries(
            "Throughput by final status",
            [prom(f"sum by ({STATUS}) (rate({JOB_COUNT}[{RATE}]))", f"{{{{{STATUS}}}}}")],
            unit="ops",
            description="Jobs finishing per second, by final status (completed, failed, cancelled).",
        ),
        w=8,
        h=6,
    )
    layout.add(
        timeseries(
            "In-flight jobs and queue depth",
            [prom(f"sum({ACTIVE})", "in flight"), prom(f"max({QUEUE_DEPTH})", "queue depth")],
            unit="short",
            description="Running jobs (all workers) and jobs waiting in the queue.",
        ),
        w=12,
        h=7,
    )
    layout.add(
        timeseries(
            "Job duration p95 by final status",
            [prom(quantile(0.95, JOB_BUCKET, [STATUS]), f"{{{{{STATUS}}}}} p95", exemplar=True)],
            unit="s",
            description="Creation to terminal status. Exemplar dots open the trace of an example job.",
        ),
        w=12,
        h=7,
    )

    layout.row("1. Which phase fails most often?")
    layout.add(
        ranked_bars(
            Q1_FAILURES_BY_PHASE,
            prom(f"sort_desc(sum by ({PHASE}) ({failures_range}))", f"{{{{{PHASE}}}}}", instant=True),
            label=PHASE,
            unit="short",
            description="Job failures in the time range by the phase they failed in, most-failing first.",
        ),
        w=8,
        h=8,
    )
    layout.add(
        timeseries(
            "Failure rate by phase",
            [prom(f"sum by ({PHASE}) (rate({FAILURES}[{RATE}]))", f"{{{{{PHASE}}}}}")],
            unit="ops",
            description="Job failures per second by phase.",
        ),
        w=16,
        h=8,
    )

    layout.row("2. Which module often exceeds its expected runtime?")
    layout.add(
        timeseries(
            "Module duration p95 vs expected runtime",
            [
                prom(quantile(0.95, MODULE_BUCKET, [MODULE]), f"{{{{{MODULE}}}}} p95", exemplar=True),
                prom(f"max by ({MODULE}) ({EXPECTED})", f"{{{{{MODULE}}}}} expected"),
            ],
            unit="s",
            description=(
                "p95 run time of each module (solid) against the expected runtime it declares (dashed). "
                "A solid line above its dashed line is a module that overruns; exemplars open example traces."
            ),
            overrides=[dashed(".* expected$")],
        ),
        w=16,
        h=8,
    )
    layout.add(
        ranked_bars(
            Q2_OVERRUNS_BY_MODULE,
            prom(f"sort_desc(sum by ({MODULE}) ({window_increase(OVERRUNS)}))", f"{{{{{MODULE}}}}}", instant=True),
            label=MODULE,
            unit="short",
            description="Module runs over their expected runtime in the time range (a warning, not a failure).",
        ),
        w=8,
        h=8,
    )
    layout.add(
        merged_table(
            Q2_MODULES_TABLE,
            MODULE,
            [
                (
                    "overrun share",
                    (
                        f"sum by ({MODULE}) ({window_increase(OVERRUNS)}) / "
                        f"sum by ({MODULE}) ({window_increase(MODULE_COUNT)})"
                    ),
                    "percentunit",
                ),
                ("p95", range_quantile(0.95, MODULE_BUCKET, [MODULE]), "s"),
                ("expected", f"max by ({MODULE}) ({EXPECTED})", "s"),
                ("overruns", f"sum by ({MODULE}) ({window_increase(OVERRUNS)})", "short"),
                ("runs", f"sum by ({MODULE}) ({window_increase(MODULE_COUNT)})", "short"),
            ],
            description="Per module over the time range: share of runs that overran, p95 against expected runtime.",
        ),
        w=24,
        h=7,
    )

    layout.row("3. Which jobs failed from transition/persistence errors rather than module logic?")
    layout.add(
        ranked_bars(
            Q3_FAILURES_BY_CATEGORY,
            prom(f"sort_desc(sum by ({CATEGORY}) ({failures_range}))", f"{{{{{CATEGORY}}}}}", instant=True),
            label=CATEGORY,
            unit="short",
            description=(
                f"Job failures in the time range by error category. {platform.replace('|', ', ')} are platform "
                f"errors; {module_logic.replace('|', ', ')} are module logic."
            ),
        ),
        w=8,
        h=8,
    )
    layout.add(
        stat(
            Q3_PLATFORM_VS_MODULE,
            [
                prom(
                    f"sum({window_increase(selector(FAILURES, error_category='~' + platform))}) or vector(0)",
                    "transition / persistence",
                    instant=True,
                ),
                prom(
                    f"sum({window_increase(selector(FAILURES, error_category='~' + module_logic))}) or vector(0)",
                    "module logic",
                    instant=True,
                ),
                prom(
                    f"sum({window_increase(selector(FAILURES, error_category='!~' + platform + '|' + module_logic))})"
                    " or vector(0)",
                    "other",
                    instant=True,
                ),
            ],
            unit="short",
            description="Failures in the time range: platform (transition, persistence) vs module logic vs the rest.",
        ),
        w=6,
        h=8,
    )
    layout.add(
        timeseries(
            "Failure rate by error category",
            [prom(f"sum by ({CATEGORY}) (rate({FAILURES}[{RATE}]))", f"{{{{{CATEGORY}}}}}")],
            unit="ops",
            description="Job failures per second by error category.",
        ),
        w=10,
        h=8,
    )
    layout.add(
        trace_table(
            "Jobs failed by transition/persistence errors",
            f'{{ name = "{SpanName.JOB}" && span.{STATUS} = "failed" && span.{CATEGORY} =~ "{platform}" }}'
            f" | select(span.{Attr.JOB_ID}, span.{Attr.PROJECT_ID}, span.{PHASE}, span.{CATEGORY}, span.{Attr.REASON})",
            description="Root spans of jobs that failed with a platform error. Open a trace, or its logs.",
        ),
        w=24,
        h=8,
    )

    layout.row("4. How long do jobs spend in each phase?")
    layout.add(
        timeseries(
            "Time in phase p50 / p95",
            [
                prom(quantile(0.5, PHASE_BUCKET, [PHASE]), f"{{{{{PHASE}}}}} p50", exemplar=True, ref="A"),
                prom(quantile(0.95, PHASE_BUCKET, [PHASE]), f"{{{{{PHASE}}}}} p95", exemplar=True, ref="B"),
            ],
            unit="s",
            description=(
                "Statuses (pending, queued, running) and steps (create, execute, finalize) of a job. "
                "Exemplars open an example trace."
            ),
            overrides=[dashed(".* p50$")],
        ),
        w=12,
        h=8,
    )
    layout.add(
        timeseries(
            "Queue wait p50 / p95",
            [
                prom(quantile(0.5, QUEUE_BUCKET, []), "p50", exemplar=True),
                prom(quantile(0.95, QUEUE_BUCKET, []), "p95", exemplar=True),
            ],
            unit="s",
            description="Time from enqueue to a worker's claim.",
            overrides=[dashed("p50")],
        ),
        w=12,
        h=8,
    )
    layout.add(
        merged_table(
            Q4_PHASE_TABLE,
            PHASE,
            [
                ("p95", range_quantile(0.95, PHASE_BUCKET, [PHASE]), "s"),
                ("p50", range_quantile(0.5, PHASE_BUCKET, [PHASE]), "s"),
                (
                    "mean",
                    f"sum by ({PHASE}) ({window_increase(PHASE_SUM)})"
                    f" / sum by ({PHASE}) ({window_increase(PHASE_COUNT)})",
                    "s",
                ),
                ("count", f"sum by ({PHASE}) ({window_increase(PHASE_COUNT)})", "short"),
            ],
            description="Per phase over the time range.",
        ),
        w=24,
        h=7,
    )

    layout.row("Recent failed jobs")
    layout.add(
        trace_table(
            "Recent failed jobs",
            f'{{ name = "{SpanName.JOB}" && span.{STATUS} = "failed" }}'
            f" | select(span.{Attr.JOB_ID}, span.{Attr.PROJECT_ID}, span.{PHASE}, span.{CATEGORY}, span.{Attr.REASON})",
            description=(
                "Root spans of failed jobs (Tempo). Trace ID links open the trace and its logs; "
                "paste a job_id into the job drill-down dashboard for the whole story."
            ),
        ),
        w=24,
        h=9,
    )

    layout.row("Webhooks, transitions and recoveries")
    layout.add(
        timeseries(
            "Webhook deliveries by outcome",
            [prom(f"sum by ({OUTCOME}) (rate({WEBHOOKS}[{RATE}]))", f"{{{{{OUTCOME}}}}}")],
            unit="ops",
            description="Webhook delivery attempts per second by outcome.",
        ),
        w=8,
        h=7,
    )
    layout.add(
        timeseries(
            "Webhook delivery p95 by outcome",
            [prom(quantile(0.95, WEBHOOK_BUCKET, [OUTCOME]), f"{{{{{OUTCOME}}}}} p95", exemplar=True)],
            unit="s",
            description="Duration of one delivery attempt.",
        ),
        w=8,
        h=7,
    )
    layout.add(
        timeseries(
            "Status transitions",
            [
                prom(
                    f"sum by ({Attr.STATUS_FROM}, {Attr.STATUS_TO}) (rate({TRANSITIONS}[{RATE}]))",
                    f"{{{{{Attr.STATUS_FROM}}}}} → {{{{{Attr.STATUS_TO}}}}}",
                ),
                prom(f"sum by ({Attr.REASON}) (rate({RECOVERIES}[{RATE}]))", f"recovered: {{{{{Attr.REASON}}}}}"),
            ],
            unit="ops",
            description="Transitions per second, and running jobs returned to the queue (lease expired, shutdown).",
        ),
        w=8,
        h=7,
    )

    layout.row("Telemetry pipeline")
    layout.add(
        timeseries(
            "SDK export failures by signal",
            [
                prom(f"sum by (job, signal) (rate({EXPORT_FAILURES}[{RATE}]))", "{{job}} {{signal}}"),
                prom(
                    f"sum by ({Attr.REASON}) (rate({RECONSTRUCTED}[{RATE}]))",
                    f"traces rebuilt: {{{{{Attr.REASON}}}}}",
                    ref="B",
                ),
            ],
            unit="ops",
            description="Batches the orchestrator's SDK could not export (dropped; jobs are not affected), and "
            "job traces rebuilt from the store and exported again because their live export was lost.",
        ),
        w=6,
        h=7,
    )
    layout.add(
        timeseries(
            "Collector: accepted vs refused",
            [
                prom(f"sum(rate(otelcol_receiver_accepted_{kind}_total[{RATE}]))", f"accepted {kind}", ref=ref)
                for ref, kind in zip("ABC", ("spans", "metric_points", "log_records"), strict=True)
            ]
            + [
                prom(f"sum(rate(otelcol_receiver_refused_{kind}_total[{RATE}]))", f"refused {kind}", ref=ref)
                for ref, kind in zip("DEF", ("spans", "metric_points", "log_records"), strict=True)
            ],
            unit="ops",
            description="Items the collector's receivers accepted or refused (memory_limiter) per second.",
        ),
        w=6,
        h=7,
    )
    layout.add(
        timeseries(
            "Collector: send failures and drops",
            [
                prom(
                    f"sum by (exporter) (rate(otelcol_exporter_send_failed_{kind}_total[{RATE}]))",
                    "send failed {{exporter}}",
                    ref=ref,
                )
                for ref, kind in zip("ABC", ("spans", "metric_points", "log_records"), strict=True)
            ]
            + [
                prom(
                    f"sum by (exporter) (rate(otelcol_exporter_enqueue_failed_{kind}_total[{RATE}]))",
                    "dropped (queue full) {{exporter}}",
                    ref=ref,
                )
                for ref, kind in zip("DEF", ("spans", "metric_points", "log_records"), strict=True)
            ],
            unit="ops",
            description="Items the collector failed to send after retries, or dropped because a queue was full.",
        ),
        w=6,
        h=7,
    )
    layout.add(
        timeseries(
            "Collector: sending queue usage",
            [
                prom(
                    "max by (exporter) (otelcol_exporter_queue_size)"
                    " / max by (exporter) (otelcol_exporter_queue_capacity)",
                    "{{exporter}}",
                )
            ],
            unit="percentunit",
            description="How full each exporter's sending queue is.",
        ),
        w=6,
        h=7,
    )

    return dashboard(
        OPERATIONS_UID,
        "Orchestrator — operations",
        "The four operational questions, throughput, queue, webhooks and the telemetry pipeline.",
        layout.panels,
        links=[
            {
                "title": "Job drill-down",
                "type": "link",
                "url": f"/d/{JOB_UID}",
                "icon": "dashboard",
                "keepTime": True,
                "targetBlank": False,
            }
        ],
    )


def job_drilldown() -> dict[str, Any]:
    layout = Layout()
    job = f'"${Attr.JOB_ID}"'
    layout.row("Trace")
    layout.add(
        trace_table(
            "Spans of the job",
            f"{{ span.{Attr.JOB_ID} = {job} }}",
            description=(
                "Every span of the job's trace (root, create, queued, execute, module, finalize). "
                "Span ID links open the waterfall and the trace's logs."
            ),
            table="spans",
            spss=100,
        ),
        w=24,
        h=9,
    )
    layout.add(
        trace_table(
            "Module runs",
            f'{{ span.{Attr.JOB_ID} = {job} && name = "{SpanName.MODULE}" }}'
            f" | select(span.{MODULE}, span.{OUTCOME}, span.{Attr.EXPECTED_MS}, span.{Attr.ERROR_TYPE})",
            description="One span per module run: outcome, expected runtime (ms) and error type.",
            table="spans",
            spss=100,
        ),
        w=24,
        h=8,
    )
    layout.row("Logs")
    layout.add(
        logs(
            "Lifecycle events",
            f'{{service_name="{SERVICE}"}} | {Attr.JOB_ID} = {job} | {Attr.STATUS_TO} != ""',
            description="The job's status transitions (records with status_to), oldest first.",
        ),
        w=24,
        h=8,
    )
    layout.add(
        logs(
            "Logs of the job",
            f'{{service_name="{SERVICE}"}} | {Attr.JOB_ID} = {job}',
            description="Every log record of the job, from every process (job_id is structured metadata in Loki).",
        ),
        w=24,
        h=12,
    )
    return dashboard(
        JOB_UID,
        "Orchestrator — job drill-down",
        "One job: its trace, module runs, lifecycle events and logs. Paste a job id into job_id.",
        layout.panels,
        variables=[
            {
                "type": "textbox",
                "name": Attr.JOB_ID,
                "label": "job id",
                "description": "The job's id (orchestrator submit prints it; so do the API and the failed-jobs table).",
                "query": "",
                "current": {"text": "", "value": ""},
                "hide": 0,
            }
        ],
        links=[
            {
                "title": "Operations",
                "type": "link",
                "url": f"/d/{OPERATIONS_UID}",
                "icon": "dashboard",
                "keepTime": True,
                "targetBlank": False,
            }
        ],
        time_from="now-6h",
    )


def build() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {"orchestrator-operations.json": operations(), "orchestrator-job.json": job_drilldown()}


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed dashboard differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output folder")
    args = parser.parse_args(argv)
    stale = []
    for name, board in build().items():
        path = args.out / name
        text = render(board)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("stale (run grafana/generate_dashboards.py): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
