"""Counters, up-down counters and gauges kept in process, read by the SDK when it collects.

A synchronous instrument sends every ``add`` through the SDK's measurement pipeline
(attribute checks, view matching, an aggregation lock, an exemplar offer): about 15 µs
each, a dozen times per job. A :class:`Tally` keeps the running value of each attribute
set in a dict and registers an *observable* instrument of the same kind, name, unit and
description, whose callback reports those values at each collection. What reaches the
exporter is the same data (a monotonic or non-monotonic sum, or a gauge, per attribute
set, in the reader's temporality); what is lost is the exemplar a synchronous counter
may attach (exemplars are for histograms here, which stay synchronous).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel.vocabulary import MetricKind, MetricSpec

__all__ = ["TALLIED", "Tally"]

#: The kinds kept as tallies (histograms stay synchronous: they carry exemplars).
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
