"""Tallied counters, up-down counters and gauges (otel/tallies.py) export what the SDK's
synchronous instruments export for the same calls: same kind, name, unit, description,
attribute sets and values, cumulative and delta."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricsData

from otel.tallies import Tally
from otel.vocabulary import MetricKind, MetricSpec

COUNTER = MetricSpec(
    "job.transitions", MetricKind.COUNTER, "{transition}", "Transitions applied", ("status_from", "status_to")
)
UP_DOWN = MetricSpec("job.active", MetricKind.UP_DOWN_COUNTER, "{job}", "Jobs running", ())
GAUGE = MetricSpec("job.module.expected_runtime", MetricKind.GAUGE, "s", "Expected runtime", ("module",))

CALLS: list[tuple[str, float, dict[str, str]]] = [
    ("add", 1, {"status_from": "queued", "status_to": "running"}),
    ("add", 1, {"status_to": "running", "status_from": "queued"}),  # the same set, other order
    ("add", 2, {"status_from": "running", "status_to": "completed"}),
    ("add", 0, {"status_from": "none", "status_to": "pending"}),
]


def points(data: MetricsData) -> dict[str, dict[str, Any]]:
    """name -> (kind facts, {attribute set: value})."""
    found: dict[str, dict[str, Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                values = {tuple(sorted((p.attributes or {}).items())): p.value for p in metric.data.data_points}
                found[metric.name] = {
                    "unit": metric.unit,
                    "description": metric.description,
                    "type": type(metric.data).__name__,
                    "monotonic": getattr(metric.data, "is_monotonic", None),
                    "temporality": getattr(metric.data, "aggregation_temporality", None),
                    "values": values,
                }
    return found


def sync_and_tallied(
    spec: MetricSpec, calls: list[tuple[str, float, dict[str, str]]], temporality: AggregationTemporality
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    preferred = {Counter: temporality, UpDownCounter: temporality, ObservableCounter: temporality}
    readers = [InMemoryMetricReader(preferred_temporality=preferred) for _ in range(2)]
    sync_meter = MeterProvider(metric_readers=[readers[0]], shutdown_on_exit=False).get_meter("m")
    tally_meter = MeterProvider(metric_readers=[readers[1]], shutdown_on_exit=False).get_meter("m")
    if spec.kind is MetricKind.COUNTER:
        sync: Any = sync_meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    elif spec.kind is MetricKind.UP_DOWN_COUNTER:
        sync = sync_meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
    else:
        sync = sync_meter.create_gauge(spec.name, unit=spec.unit, description=spec.description)
    tally = Tally(tally_meter, spec)
    collections: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for round_calls in (calls, calls[:1], []):
        for method, value, attributes in round_calls:
            getattr(sync, method)(value, attributes)
            getattr(tally, method)(value, attributes)
        for reader, out in zip(readers, collections, strict=True):
            data = reader.get_metrics_data()
            out.append(points(data) if data is not None else {})
    return collections


@pytest.mark.parametrize("temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA])
def test_a_tallied_counter_exports_what_a_counter_exports(temporality: AggregationTemporality) -> None:
    sync, tallied = sync_and_tallied(COUNTER, CALLS, temporality)
    assert tallied[0] == sync[0]
    assert tallied[0][COUNTER.name]["values"] == {
        (("status_from", "queued"), ("status_to", "running")): 2,
        (("status_from", "running"), ("status_to", "completed")): 2,
        (("status_from", "none"), ("status_to", "pending")): 0,
    }
    # Later collections: the running totals (cumulative) or what changed (delta).
    for later_sync, later_tallied in zip(sync[1:], tallied[1:], strict=True):
        if temporality is AggregationTemporality.CUMULATIVE:
            assert later_tallied == later_sync
        else:
            changed = {k: v for k, v in later_tallied.get(COUNTER.name, {}).get("values", {}).items() if v}
            expected = {k: v for k, v in later_sync.get(COUNTER.name, {}).get("values", {}).items() if v}
            assert changed == expected


def test_a_tallied_up_down_counter_and_gauge_export_what_the_sdk_instruments_export() -> None:
    calls = [("add", 1, {}), ("add", 1, {}), ("add", -1, {}), ("add", 3, {"k": "v"})]
    sync, tallied = sync_and_tallied(UP_DOWN, calls, AggregationTemporality.CUMULATIVE)
    assert tallied == sync
    assert tallied[0][UP_DOWN.name]["values"] == {(): 1, (("k", "v"),): 3}
    gauge_calls = [("set", 2.5, {"module": "a"}), ("set", 1.0, {"module": "b"}), ("set", 4.0, {"module": "a"})]
    sync, tallied = sync_and_tallied(GAUGE, gauge_calls, AggregationTemporality.CUMULATIVE)
    assert tallied[0] == sync[0]
    assert tallied[0][GAUGE.name]["values"] == {(("module", "a"),): 4.0, (("module", "b"),): 1.0}


def test_a_negative_amount_is_ignored_by_a_counter() -> None:
    reader = InMemoryMetricReader()
    tally = Tally(MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("m"), COUNTER)
    tally.add(2, {"a": "b"})
    tally.add(-1, {"a": "b"})
    data = reader.get_metrics_data()
    assert data is not None
    assert points(data)[COUNTER.name]["values"] == {(("a", "b"),): 2}


def test_adds_from_many_threads_while_collecting_lose_nothing() -> None:
    reader = InMemoryMetricReader()
    tally = Tally(MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("m"), COUNTER)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            reader.get_metrics_data()

    def add() -> None:
        for i in range(5000):
            tally.add(1, {"n": str(i % 7)})

    collector = threading.Thread(target=collect)
    collector.start()
    adders = [threading.Thread(target=add) for _ in range(4)]
    for thread in adders:
        thread.start()
    for thread in adders:
        thread.join()
    stop.set()
    collector.join()
    data = reader.get_metrics_data()
    assert data is not None
    assert sum(points(data)[COUNTER.name]["values"].values()) == 4 * 5000


def test_only_counters_up_down_counters_and_gauges_are_tallied() -> None:
    meter = MeterProvider(shutdown_on_exit=False).get_meter("m")
    with pytest.raises(ValueError, match="histogram"):
        Tally(meter, MetricSpec("h", MetricKind.HISTOGRAM, "s", "d", ()))
