"""Metrics kept in process and handed to the SDK's readers when they collect.

A synchronous instrument sends every measurement through the SDK's pipeline (attribute
checks and copies, view matching, attribute hashing, an aggregation lock, an exemplar
offer): 15-40 µs each, about twenty times per job.

* A :class:`Tally` (counters, up-down counters, gauges) keeps the running value of each
  attribute set in a dict and registers an *observable* instrument of the same kind,
  name, unit and description, whose callback reports those values at each collection.
  What reaches the exporter is the same data (a monotonic or non-monotonic sum, or a
  gauge, per attribute set, in the reader's temporality); what is lost is the exemplar a
  synchronous counter may attach (exemplars are for histograms).
* A :class:`HistogramTally` keeps, per reader of its :class:`TallyBoard` and attribute
  set, what the SDK's explicit-bucket histogram keeps (bucket counts, sum, min, max, one
  exemplar per bucket chosen by the provider's exemplar filter) and joins each of those
  readers' collections (:class:`TalliedReader`) as the SDK's histogram would, in the
  reader's temporality. The SDK has no observable histogram: this is the one place the
  project builds metric points itself, checked point for point against the SDK's
  histogram in the tests. Used only where every reader reads histograms as the SDK's
  default (:func:`reader_temporality`); otherwise the SDK's histogram is used.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.context import get_current
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Exemplar, ExemplarFilter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel.vocabulary import MetricKind, MetricSpec

__all__ = [
    "TALLIED",
    "HistogramTally",
    "TalliedReader",
    "Tally",
    "TallyBoard",
    "board_for",
    "reader_temporality",
    "register_board",
]

_logger = logging.getLogger(__name__)
#: The SDK's bounds for a histogram without advice (its explicit-bucket default).
_SDK_DEFAULT_BOUNDS: Final = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
                              7500.0, 10000.0)

#: The kinds kept as :class:`Tally` (histograms: :class:`HistogramTally`, on a board).
TALLIED: Final = frozenset({MetricKind.COUNTER, MetricKind.UP_DOWN_COUNTER, MetricKind.GAUGE})

_Key = tuple[tuple[str, str], ...]


class Tally:
    """One metric of :data:`TALLIED` kind: ``add`` (counters) or ``set`` (gauges)."""

    def __init__(self, meter: metrics.Meter, spec: MetricSpec) -> None:
        if spec.kind not in TALLIED:
            raise ValueError(f"{spec.name} is a {spec.kind}, not a tallied kind")
        self.spec = spec
        self._values: dict[_Key, float] = {}
        self._lock = threading.Lock()
        create = {
            MetricKind.COUNTER: meter.create_observable_counter,
            MetricKind.UP_DOWN_COUNTER: meter.create_observable_up_down_counter,
            MetricKind.GAUGE: meter.create_observable_gauge,
        }[spec.kind]
        create(spec.name, callbacks=[self._observe], unit=spec.unit, description=spec.description)

    def add(self, value: float, attributes: Mapping[str, str]) -> None:
        if value < 0 and self.spec.kind is MetricKind.COUNTER:
            return  # as the SDK's counter: a monotonic sum ignores a negative amount
        key = tuple(sorted(attributes.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + value

    def set(self, value: float, attributes: Mapping[str, str]) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            self._values[key] = value

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
        return [Observation(value, dict(key)) for key, value in values]


# -- histograms ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Sums:
    """Bucket counts, sum, min and max of one attribute set: since a reader's last
    collection, or (a cumulative reader's) in all."""

    attributes: dict[str, str]
    start_ns: int
    counts: list[int]
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def absorb(self, other: _Sums) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)


@dataclass(slots=True)
class _Interval(_Sums):
    """What one attribute set recorded since a reader's last collection."""

    #: Bucket index -> the last sampled measurement there: value, time, attributes, span, trace.
    exemplars: dict[int, tuple[float, int, Mapping[str, str], int | None, int | None]] = field(default_factory=dict)


class HistogramTally:
    """A histogram kept in process, with what the SDK's synchronous histogram keeps for
    each reader: explicit bucket counts, sum, min and max per attribute set, and one
    exemplar per bucket (the last measurement the exemplar filter lets through, as the
    SDK's aligned bucket reservoir keeps it). Each reader of its :class:`TallyBoard`
    reads it at collection, in that reader's temporality."""

    def __init__(self, board: TallyBoard, spec: MetricSpec) -> None:
        if spec.kind is not MetricKind.HISTOGRAM:
            raise ValueError(f"{spec.name} is a {spec.kind}, not a histogram")
        self.spec = spec
        self._board = board
        self._bounds = tuple(spec.buckets or _SDK_DEFAULT_BOUNDS)
        self._lock = threading.Lock()
        readers = len(board.temporalities)
        self._intervals: list[dict[_Key, _Interval]] = [{} for _ in range(readers)]
        self._totals: list[dict[_Key, _Sums]] = [{} for _ in range(readers)]
        #: Per reader and attribute set: where its next point starts (delta readers).
        self._since: list[dict[_Key, int]] = [{} for _ in range(readers)]

    def record(self, value: float, attributes: Mapping[str, str]) -> None:
        if not math.isfinite(value) or value < 0:
            _logger.warning("histogram %s ignores the value %s (not finite, or negative)", self.spec.name, value)
            return
        now = time.time_ns()
        context = get_current()
        exemplar = None
        if self._board.exemplar_filter.should_sample(value, now, attributes, context):
            span = trace.get_current_span(context)
            ids = span.get_span_context() if span is not trace.INVALID_SPAN else None
            exemplar = (value, now, attributes, ids.span_id if ids else None, ids.trace_id if ids else None)
        key = tuple(sorted(attributes.items()))
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            for interval in self._intervals:
                point = interval.get(key)
                if point is None:
                    point = interval[key] = _Interval(dict(attributes), now, [0] * (len(self._bounds) + 1))
                point.counts[index] += 1
                point.sum += value
                point.min = min(point.min, value)
                point.max = max(point.max, value)
                if exemplar is not None:
                    previous = point.exemplars.get(index)
                    if exemplar[3] is None and previous is not None:  # the bucket keeps its last span's ids
                        exemplar = (*exemplar[:3], previous[3], previous[4])
                    point.exemplars[index] = exemplar

    def collect(self, reader: int, now: int) -> Metric | None:
        """This histogram's points for reader number ``reader`` (None: nothing to report)."""
        temporality = self._board.temporalities[reader]
        with self._lock:
            interval, self._intervals[reader] = self._intervals[reader], {}
            since = self._since[reader]
            for key, point in interval.items():
                since.setdefault(key, point.start_ns)
            points: list[HistogramDataPoint] = []
            if temporality is AggregationTemporality.DELTA:
                for key, point in interval.items():
                    points.append(self._point(point, since[key], now, point))
                for key in since:  # as the SDK's aggregation: the next point starts here
                    since[key] = now
            else:
                totals = self._totals[reader]
                for key, point in interval.items():
                    total = totals.get(key)
                    if total is None:
                        total = totals[key] = _Sums(point.attributes, since[key], [0] * len(point.counts))
                    total.absorb(point)
                for key, total in totals.items():
                    points.append(self._point(total, total.start_ns, now, interval.get(key)))
        if not points:
            return None
        spec = self.spec
        return Metric(spec.name, spec.description, spec.unit, Histogram(points, temporality))

    def _point(self, sums: _Sums, start_ns: int, now: int, sampled: _Interval | None) -> HistogramDataPoint:
        attributes = sums.attributes
        exemplars = []
        if sampled is not None:
            for _, (value, at, measured, span_id, trace_id) in sorted(sampled.exemplars.items()):
                # As the SDK: only what the point's own attributes do not already say.
                filtered = {k: v for k, v in measured.items() if k not in attributes} if measured else None
                exemplars.append(Exemplar(filtered, value, at, span_id, trace_id))
        return HistogramDataPoint(
            attributes=attributes,
            start_time_unix_nano=start_ns,
            time_unix_nano=now,
            count=sum(sums.counts),
            sum=sums.sum,
            bucket_counts=tuple(sums.counts),
            explicit_bounds=self._bounds,
            min=sums.min,
            max=sums.max,
            exemplars=exemplars,
        )


class TallyBoard:
    """The tallied histograms of one meter provider and the readers that read them.

    Each reader is a :class:`TalliedReader` given its number on the board; at each of
    its collections the board's histograms join what the SDK collected, under the
    meter's instrumentation scope."""

    def __init__(
        self,
        resource: Resource,
        scope: InstrumentationScope,
        exemplar_filter: ExemplarFilter,
        temporalities: Sequence[AggregationTemporality],
    ) -> None:
        self.resource, self.scope, self.exemplar_filter = resource, scope, exemplar_filter
        self.temporalities = tuple(temporalities)
        self._histograms: dict[str, HistogramTally] = {}
        self._lock = threading.Lock()

    def histogram(self, spec: MetricSpec) -> HistogramTally:
        """The board's histogram of ``spec`` (one per name, as the SDK has one instrument)."""
        with self._lock:
            found = self._histograms.get(spec.name)
            if found is None:
                found = self._histograms[spec.name] = HistogramTally(self, spec)
            return found

    def merge(self, reader: int, data: MetricsData | None) -> MetricsData | None:
        """``data`` (what the SDK collected for reader ``reader``) with the histograms."""
        now = time.time_ns()
        with self._lock:
            histograms = list(self._histograms.values())
        metrics = [m for m in (h.collect(reader, now) for h in histograms) if m is not None]
        if not metrics:
            return data
        resources = list(data.resource_metrics) if data is not None else []
        if not resources:
            resources = [ResourceMetrics(self.resource, [], self.resource.schema_url)]
        first = resources[0]
        scopes = list(first.scope_metrics)
        for n, scope in enumerate(scopes):
            if scope.scope == self.scope:
                scopes[n] = ScopeMetrics(scope.scope, [*scope.metrics, *metrics], scope.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self.scope, metrics, self.scope.schema_url or ""))
        resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resources)


class TalliedReader(MetricReader):
    """A metric reader (mixed in before the SDK's reader class) whose collections carry
    a :class:`TallyBoard`'s histograms, once :meth:`read_tallies` names the board."""

    _tally_board: TallyBoard | None = None
    _tally_index = 0
    _tally_merged = False

    def read_tallies(self, board: TallyBoard, index: int) -> None:
        self._tally_board, self._tally_index = board, index

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        board = self._tally_board
        if board is not None:
            metrics_data = board.merge(self._tally_index, metrics_data) or metrics_data
            self._tally_merged = True
        super()._receive_metrics(metrics_data, timeout_millis=timeout_millis, **kwargs)  # type: ignore[safe-super]

    # ``collect`` is marked final for type checkers (a typing marker only): this adds to
    # it without changing what it does for the SDK's own data.
    def collect(self, timeout_millis: float = 10_000) -> None:  # type: ignore[misc]
        self._tally_merged = False
        super().collect(timeout_millis=timeout_millis)
        board = self._tally_board
        if board is not None and not self._tally_merged and self._collect is not None:
            # The SDK had nothing of its own to report (it then skips the reader's
            # receive): the histograms still go.
            data = board.merge(self._tally_index, None)
            if data is not None:
                super()._receive_metrics(data, timeout_millis=timeout_millis)  # type: ignore[safe-super]


def reader_temporality(reader: MetricReader) -> AggregationTemporality | None:
    """The temporality ``reader`` wants for histograms; None when the reader would not
    aggregate them as the SDK's default explicit-bucket histogram (then they stay
    synchronous SDK instruments)."""
    temporality = _for_histogram(getattr(reader, "_instrument_class_temporality", None))
    aggregation = _for_histogram(getattr(reader, "_instrument_class_aggregation", None))
    if not isinstance(temporality, AggregationTemporality):
        return None
    if type(aggregation) is DefaultAggregation:
        return temporality
    # What the OTLP exporters ask for by default: explicit buckets, the instrument's
    # advised bounds, min and max.
    if (
        type(aggregation) is ExplicitBucketHistogramAggregation
        and getattr(aggregation, "_boundaries", ()) is None
        and getattr(aggregation, "_record_min_max", False) is True
    ):
        return temporality
    return None


def _for_histogram(by_class: Any) -> Any:
    if not isinstance(by_class, dict):
        return None
    return next((v for k, v in by_class.items() if isinstance(k, type) and issubclass(k, SdkHistogram)), None)


_BOARDS: weakref.WeakKeyDictionary[Any, TallyBoard] = weakref.WeakKeyDictionary()


def register_board(meter_provider: Any, board: TallyBoard) -> None:
    _BOARDS[meter_provider] = board


def board_for(meter_provider: Any) -> TallyBoard | None:
    """The board of a provider set up with tallied histograms (otel.setup), else None."""
    return _BOARDS.get(meter_provider)
