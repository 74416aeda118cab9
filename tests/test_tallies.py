"""Tallied counters, up-down counters, gauges and histograms (otel/tallies.py) export
what the SDK's synchronous instruments export for the same calls: same kind, name, unit,
description, attribute sets and values, cumulative and delta; for histograms the bucket
counts, sum, min, max and exemplars too, read by each reader in its own temporality."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import (
    AlwaysOnExemplarFilter,
    Counter,
    MeterProvider,
    ObservableCounter,
    TraceBasedExemplarFilter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from orchestrator.telemetry import JobTelemetry
from otel.setup import setup_telemetry
from otel.tallies import HistogramTally, TalliedReader, Tally, TallyBoard, board_for, reader_temporality
from otel.vocabulary import Metric, MetricKind, MetricSpec

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


# -- histograms ------------------------------------------------------------------------------

HISTOGRAM = MetricSpec("job.phase.duration", MetricKind.HISTOGRAM, "s", "Phase duration", ("phase",))


class TalliedMemoryReader(TalliedReader, InMemoryMetricReader):
    pass


def histogram_points(data: MetricsData | None, name: str) -> list[dict[str, Any]]:
    """The points of histogram ``name``, timestamps aside (checked on their own)."""
    if data is None:
        return []
    found = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                assert isinstance(metric.data, Histogram)
                for p in metric.data.data_points:
                    found.append({
                        "scope": scope.scope.name, "unit": metric.unit, "description": metric.description,
                        "temporality": metric.data.aggregation_temporality,
                        "attributes": dict(p.attributes or {}), "count": p.count, "sum": p.sum,
                        "buckets": tuple(p.bucket_counts), "bounds": tuple(p.explicit_bounds),
                        "min": p.min, "max": p.max,
                        "exemplars": [(e.value, e.span_id, e.trace_id, e.filtered_attributes) for e in p.exemplars],
                    })
    return sorted(found, key=lambda p: sorted(p["attributes"].items()))


def sdk_and_tallied_histogram(
    temporalities: list[AggregationTemporality], exemplar_filter: Any = None
) -> tuple[list[InMemoryMetricReader], Any, list[TalliedMemoryReader], HistogramTally]:
    """The SDK's synchronous histogram and a tallied one, each read by one reader per temporality."""
    def preferred(t: AggregationTemporality) -> dict[type, AggregationTemporality]:
        return {SdkHistogram: t}

    sdk_readers = [InMemoryMetricReader(preferred_temporality=preferred(t)) for t in temporalities]
    tallied_readers = [TalliedMemoryReader(preferred_temporality=preferred(t)) for t in temporalities]
    filter_ = exemplar_filter or TraceBasedExemplarFilter()
    sdk_meter = MeterProvider(metric_readers=sdk_readers, shutdown_on_exit=False,
                              exemplar_filter=filter_).get_meter("orchestrator")
    provider = MeterProvider(metric_readers=tallied_readers, shutdown_on_exit=False, exemplar_filter=filter_)
    found = [reader_temporality(r) for r in tallied_readers]
    assert found == temporalities
    board = TallyBoard(provider._sdk_config.resource, InstrumentationScope("orchestrator"), filter_, temporalities)
    for n, reader in enumerate(tallied_readers):
        reader.read_tallies(board, n)
    sdk = sdk_meter.create_histogram(HISTOGRAM.name, unit=HISTOGRAM.unit, description=HISTOGRAM.description,
                                     explicit_bucket_boundaries_advisory=list(HISTOGRAM.buckets or ()))
    return sdk_readers, sdk, tallied_readers, board.histogram(HISTOGRAM)


def record_both(sdk: Any, tally: HistogramTally, value: float, attributes: dict[str, str]) -> None:
    sdk.record(value, attributes)
    tally.record(value, attributes)


@pytest.mark.parametrize("temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA])
def test_a_tallied_histogram_exports_what_the_sdks_histogram_exports(temporality: AggregationTemporality) -> None:
    sdk_readers, sdk, tallied_readers, tally = sdk_and_tallied_histogram([temporality])
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    unsampled = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False).get_tracer("t")
    rounds: list[list[tuple[float, dict[str, str], str]]] = [
        [(0.004, {"phase": "execute"}, "sampled"), (0.004, {"phase": "execute"}, "none"),
         (0.3, {"phase": "execute", "status": "ok"}, "sampled"),
         (0.3, {"status": "ok", "phase": "execute"}, "unsampled"),
         (500.0, {"phase": "queued"}, "sampled"), (0.0, {}, "sampled"), (0.01, {"phase": "queued"}, "sampled")],
        [(2.0, {"phase": "queued"}, "none")],  # a round without sampled measurements
        [],  # a round without any
    ]
    for calls in rounds:
        for value, attributes, where in calls:
            if where == "none":
                record_both(sdk, tally, value, attributes)
                continue
            with (tracer if where == "sampled" else unsampled).start_as_current_span("s"):
                record_both(sdk, tally, value, attributes)
        expected = histogram_points(sdk_readers[0].get_metrics_data(), HISTOGRAM.name)
        assert histogram_points(tallied_readers[0].get_metrics_data(), HISTOGRAM.name) == expected
    # Independently of the SDK: the first round's execute point and its exemplar.
    _, _, tallied_again, tally2 = sdk_and_tallied_histogram([temporality])
    with tracer.start_as_current_span("s") as span:
        tally2.record(0.004, {"phase": "execute"})
        tally2.record(0.003, {"phase": "execute"})
    tally2.record(0.2, {"phase": "execute"})
    (point,) = histogram_points(tallied_again[0].get_metrics_data(), HISTOGRAM.name)
    assert (point["count"], point["min"], point["max"]) == (3, 0.003, 0.2)
    assert point["sum"] == pytest.approx(0.207)
    assert point["buckets"][:8] == (0, 0, 2, 0, 0, 0, 0, 1)  # 0.003 and 0.004 in (0.0025, 0.005]; 0.2 in (0.1, 0.25]
    context = span.get_span_context()
    assert point["exemplars"] == [(0.003, context.span_id, context.trace_id, {})]  # the bucket's last, sampled


def test_each_reader_reads_the_histogram_in_its_own_temporality() -> None:
    both = [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
    sdk_readers, sdk, tallied_readers, tally = sdk_and_tallied_histogram(both)
    for value in (0.1, 0.2):
        record_both(sdk, tally, value, {"phase": "execute"})
    first = [histogram_points(r.get_metrics_data(), HISTOGRAM.name) for r in tallied_readers]
    assert first == [histogram_points(r.get_metrics_data(), HISTOGRAM.name) for r in sdk_readers]
    record_both(sdk, tally, 0.4, {"phase": "execute"})
    cumulative, delta = (histogram_points(r.get_metrics_data(), HISTOGRAM.name) for r in tallied_readers)
    assert [histogram_points(r.get_metrics_data(), HISTOGRAM.name) for r in sdk_readers] == [cumulative, delta]
    assert (cumulative[0]["count"], delta[0]["count"]) == (3, 1)
    assert (cumulative[0]["min"], delta[0]["min"]) == (0.1, 0.4)


def test_histogram_timestamps_follow_the_sdks_rules() -> None:
    both = [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
    _, _, readers, tally = sdk_and_tallied_histogram(both)

    def stamps(reader: TalliedMemoryReader) -> tuple[int, int]:
        data = reader.get_metrics_data()
        assert data is not None
        metric = next(m for s in data.resource_metrics[0].scope_metrics for m in s.metrics if m.name == HISTOGRAM.name)
        point = metric.data.data_points[0]
        return point.start_time_unix_nano, point.time_unix_nano

    before = time.time_ns()
    tally.record(1.0, {})
    cumulative1, delta1 = stamps(readers[0]), stamps(readers[1])
    tally.record(1.0, {})
    cumulative2, delta2 = stamps(readers[0]), stamps(readers[1])
    # Cumulative: every point starts at the first measurement; delta: where the last ended.
    assert before <= cumulative1[0] == cumulative2[0] <= cumulative1[1] <= cumulative2[1]
    assert before <= delta1[0] <= delta1[1] == delta2[0] <= delta2[1]


def test_a_histogram_alone_is_still_exported() -> None:
    """The SDK reports nothing when none of its own instruments has a point (its reader
    then receives nothing): the tallied histogram still reaches the reader."""
    _, _, readers, tally = sdk_and_tallied_histogram([AggregationTemporality.CUMULATIVE])
    assert readers[0].get_metrics_data() is None
    tally.record(0.5, {"phase": "finalize"})
    data = readers[0].get_metrics_data()
    (point,) = histogram_points(data, HISTOGRAM.name)
    assert (point["scope"], point["count"], point["attributes"]) == ("orchestrator", 1, {"phase": "finalize"})


def test_always_on_exemplars_keep_the_buckets_last_span() -> None:
    sdk_readers, sdk, tallied_readers, tally = sdk_and_tallied_histogram(
        [AggregationTemporality.CUMULATIVE], AlwaysOnExemplarFilter())
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    with tracer.start_as_current_span("s"):
        record_both(sdk, tally, 0.2, {"phase": "execute"})
    record_both(sdk, tally, 0.21, {"phase": "execute"})  # outside any span, same bucket
    record_both(sdk, tally, 9.0, {})  # outside any span, a bucket of its own
    expected = histogram_points(sdk_readers[0].get_metrics_data(), HISTOGRAM.name)
    assert histogram_points(tallied_readers[0].get_metrics_data(), HISTOGRAM.name) == expected
    assert [e[0] for p in expected for e in p["exemplars"]] == [9.0, 0.21]


def test_invalid_values_are_ignored_as_the_sdk_ignores_them(caplog: pytest.LogCaptureFixture) -> None:
    sdk_readers, sdk, tallied_readers, tally = sdk_and_tallied_histogram([AggregationTemporality.CUMULATIVE])
    for value in (-1.0, math.inf, math.nan, 0.5):
        record_both(sdk, tally, value, {})
    expected = histogram_points(sdk_readers[0].get_metrics_data(), HISTOGRAM.name)
    assert histogram_points(tallied_readers[0].get_metrics_data(), HISTOGRAM.name) == expected
    assert expected[0]["count"] == 1
    assert "ignores the value -1.0" in caplog.text


def test_records_from_many_threads_while_collecting_lose_nothing() -> None:
    _, _, readers, tally = sdk_and_tallied_histogram([AggregationTemporality.DELTA])
    stop = threading.Event()
    counted: list[int] = []

    def collect() -> None:
        while not stop.is_set():
            counted.extend(p["count"] for p in histogram_points(readers[0].get_metrics_data(), HISTOGRAM.name))

    collector = threading.Thread(target=collect)
    collector.start()
    recorders = [threading.Thread(target=lambda: [tally.record(0.1, {"n": str(i % 3)}) for i in range(3000)])
                 for _ in range(4)]
    for thread in recorders:
        thread.start()
    for thread in recorders:
        thread.join()
    stop.set()
    collector.join()
    counted.extend(p["count"] for p in histogram_points(readers[0].get_metrics_data(), HISTOGRAM.name))
    assert sum(counted) == 4 * 3000


def _exported_histograms(metrics_file: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        for resource in json.loads(line)["resourceMetrics"]:
            for scope in resource["scopeMetrics"]:
                for metric in scope["metrics"]:
                    if "histogram" in metric:
                        found.setdefault(metric["name"], []).extend(metric["histogram"]["dataPoints"])
    return found


def test_the_products_setup_tallies_the_job_histograms(tmp_path: Path) -> None:
    """setup_telemetry (the embedded files here) keeps the job histograms in process and
    its reader exports them: buckets, exemplar and all."""
    telemetry = setup_telemetry(service_version="0", telemetry_dir=tmp_path, env={}, metric_interval_s=60)
    try:
        assert telemetry.meter_provider is not None
        assert board_for(telemetry.meter_provider) is not None
        job_telemetry = JobTelemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.sampler)
        assert isinstance(job_telemetry._instruments[Metric.PHASE_DURATION.name], HistogramTally)
        tracer = telemetry.tracer_provider.get_tracer("t") if telemetry.tracer_provider else None
        assert tracer is not None
        with tracer.start_as_current_span("job") as span:
            job_telemetry._record(Metric.PHASE_DURATION, 0.02, phase="execute")
        telemetry.flush(5.0)
    finally:
        telemetry.shutdown(5.0)
    # Exported at the flush, then again (cumulative, no new exemplar) at the shutdown.
    point, again = _exported_histograms(tmp_path / "metrics.jsonl")[Metric.PHASE_DURATION.name]
    assert int(point["count"]) == int(again["count"]) == 1
    assert "exemplars" not in again
    assert point["attributes"] == [{"key": "phase", "value": {"stringValue": "execute"}}]
    assert point["explicitBounds"][:5] == [0.001, 0.0025, 0.005, 0.01, 0.025]
    assert [int(c) for c in point["bucketCounts"]][:5] == [0, 0, 0, 0, 1]
    (exemplar,) = point["exemplars"]
    assert exemplar["spanId"] == format(span.get_span_context().span_id, "016x")


def test_an_exponential_histogram_asked_of_the_otlp_exporter_keeps_the_sdks_histograms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
           "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram"}
    for key, value in env.items():  # the exporters read the environment when they are built
        monkeypatch.setenv(key, value)
    telemetry = setup_telemetry(service_version="0", telemetry_dir=tmp_path, env=env, metric_interval_s=60)
    try:
        assert board_for(telemetry.meter_provider) is None
        job_telemetry = JobTelemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.sampler)
        assert not isinstance(job_telemetry._instruments[Metric.PHASE_DURATION.name], HistogramTally)
    finally:
        telemetry.shutdown(0.5)
