"""The metrics of a known scenario, read from an InMemoryMetricReader: names, units,
attributes and counts from the vocabulary, and no identifier ever in a metric attribute.

Scenario: two jobs; the first completes with two modules, one of which overruns its
expected runtime; the second fails because one of its modules reports an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import Histogram, Sum
from telemetry_helpers import FakeModule, TelemetryHarness, fail, ok, run_job

from orchestrator.bootstrap import open_app
from orchestrator.domain import JobStatus
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from otel.vocabulary import METRICS, Attr, Metric, MetricKind

pytestmark = pytest.mark.anyio

#: Attribute keys that would give a metric one series per job, project or process.
FORBIDDEN_ATTRIBUTES = {Attr.JOB_ID, Attr.PROJECT_ID, "job", "instance"}


@pytest.fixture
async def scenario(tmp_path: Path, harness: TelemetryHarness) -> TelemetryHarness:
    source = tmp_path / "project"
    source.mkdir()
    (source / "app.py").write_text("x = 1\n", encoding="utf-8")
    registry = ModuleRegistry(
        [
            FakeModule("steady", ok()),
            FakeModule("sluggish", ok(0.06), expected_runtime=0.01),
            FakeModule("broken", fail("malformed manifest")),
        ]
    )
    async with open_app(Settings(data_dir=tmp_path / "data"), telemetry=harness.telemetry, registry=registry) as app:
        done = await run_job(app, {"project_id": "p-ok", "source": str(source), "modules": ["steady", "sluggish"]})
        failed = await run_job(app, {"project_id": "p-bad", "source": str(source), "modules": ["steady", "broken"]})
    assert done.status is JobStatus.COMPLETED
    assert failed.status is JobStatus.FAILED
    return harness


async def test_names_units_and_kinds_come_from_the_vocabulary(scenario: TelemetryHarness) -> None:
    collected = scenario.metrics()
    expected = {
        Metric.TRANSITIONS,
        Metric.PHASE_DURATION,
        Metric.JOB_DURATION,
        Metric.MODULE_DURATION,
        Metric.MODULE_EXPECTED,
        Metric.MODULE_OVERRUNS,
        Metric.FAILURES,
        Metric.QUEUE_WAIT,
    }
    assert {spec.name for spec in expected} <= set(collected)
    specs = {spec.name: spec for spec in METRICS}
    assert set(collected) <= set(specs), "every metric name is in the vocabulary"
    for name, metric in collected.items():
        spec = specs[name]
        assert metric.unit == spec.unit, name
        assert metric.description == spec.description, name
        if spec.kind is MetricKind.HISTOGRAM:
            assert isinstance(metric.data, Histogram), name
        elif spec.kind is MetricKind.COUNTER:
            assert isinstance(metric.data, Sum), name
            assert metric.data.is_monotonic, name
    assert collected[Metric.PHASE_DURATION.name].unit == "s"


async def test_no_identifier_is_a_metric_attribute(scenario: TelemetryHarness) -> None:
    specs = {spec.name: spec for spec in METRICS}
    points = 0
    for name, metric in scenario.metrics().items():
        for point in metric.data.data_points:
            points += 1
            keys = set(point.attributes or {})
            assert not keys & FORBIDDEN_ATTRIBUTES, f"{name} has {keys & FORBIDDEN_ATTRIBUTES}"
            assert keys <= set(specs[name].attributes), f"{name}: {keys} not declared in the vocabulary"
    assert points > 0


async def test_transitions(scenario: TelemetryHarness) -> None:
    assert scenario.sums(Metric.TRANSITIONS, Attr.STATUS_FROM, Attr.STATUS_TO) == {
        ("none", "pending"): 2,
        ("pending", "queued"): 2,
        ("queued", "running"): 2,
        ("running", "completed"): 1,
        ("running", "failed"): 1,
    }


async def test_phase_durations(scenario: TelemetryHarness) -> None:
    counts = scenario.histogram_counts(Metric.PHASE_DURATION, Attr.PHASE)
    # statuses (from transitions) and the create/execute/finalize phase spans
    assert counts == {
        ("pending",): 2,
        ("queued",): 2,
        ("running",): 2,
        ("create",): 2,
        ("execute",): 2,
        ("finalize",): 2,
    }
    for point in scenario.points(Metric.PHASE_DURATION):
        assert 0 <= point.min <= point.max < 30, "seconds, not milliseconds or nanoseconds"
    running = next(p for p in scenario.points(Metric.PHASE_DURATION) if p.attributes[Attr.PHASE] == "running")
    assert running.max >= 0.05, "the sluggish module kept its job running for ~60 ms"


async def test_job_and_queue_durations(scenario: TelemetryHarness) -> None:
    assert scenario.histogram_counts(Metric.JOB_DURATION, Attr.STATUS) == {("completed",): 1, ("failed",): 1}
    waits = scenario.points(Metric.QUEUE_WAIT)
    assert len(waits) == 1
    assert dict(waits[0].attributes or {}) == {}
    assert waits[0].count == 2


async def test_module_durations_overruns_and_failures(scenario: TelemetryHarness) -> None:
    assert scenario.histogram_counts(Metric.MODULE_DURATION, Attr.MODULE, Attr.OUTCOME) == {
        ("steady", "ok"): 2,
        ("sluggish", "ok"): 1,
        ("broken", "error"): 1,
    }
    sluggish = next(p for p in scenario.points(Metric.MODULE_DURATION) if p.attributes[Attr.MODULE] == "sluggish")
    assert sluggish.max >= 0.05  # slept 60 ms (asyncio may wake a clock tick early)
    assert scenario.sums(Metric.MODULE_OVERRUNS, Attr.MODULE) == {("sluggish",): 1}
    assert scenario.sums(Metric.FAILURES, Attr.PHASE, Attr.ERROR_CATEGORY) == {("execute", "module"): 1}
    expected = {p.attributes[Attr.MODULE]: p.value for p in scenario.points(Metric.MODULE_EXPECTED)}
    assert expected == {"steady": 5.0, "sluggish": 0.01, "broken": 5.0}
