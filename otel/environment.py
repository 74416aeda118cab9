"""The standard ``OTEL_*`` variables checked before OpenTelemetry reads them.

Some values make the SDK raise instead of warning: a span or log limit that is not a
non-negative integer (read when ``opentelemetry.sdk.trace`` is first imported), an
unknown propagator (read when ``opentelemetry.propagate`` is imported), an unknown
exemplar filter or provider, a batch processor's delay or batch size out of range. A
program importing the SDK would end in a traceback through the import machinery.
:func:`check_environment` finds those values first, with the standard library only (it
imports nothing of OpenTelemetry), so the command line can refuse them in one line that
names the variable. It follows the SDK's own parsing (the tests compare it with the SDK
on the same values): what the SDK accepts passes, what it refuses is refused, and a
batch processor's number the SDK cannot parse at all (it logs an error with a traceback
and uses its default) is refused as well.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Final

__all__ = ["EXPORT_QUEUE_SIZE", "TelemetryConfigError", "check_environment", "export_queue_size"]

#: The export queues' length (spans, log records) this package's setup gives the SDK's
#: batch processors unless ``OTEL_BSP_MAX_QUEUE_SIZE``/``OTEL_BLRP_MAX_QUEUE_SIZE`` says
#: otherwise: a batch of ``OTEL_BSP/BLRP_MAX_EXPORT_BATCH_SIZE`` must fit in it.
EXPORT_QUEUE_SIZE: Final = 4096


#: The SDK's export batch when ``OTEL_BSP/BLRP_MAX_EXPORT_BATCH_SIZE`` is not set.
SDK_EXPORT_BATCH_SIZE: Final = 512


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable OpenTelemetry would refuse; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable
        self.message = message


#: Limits the SDK reads as non-negative integers, an empty value meaning "no limit".
_LIMITS: Final = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)

#: Limits that size the SDK's bounded lists of a span (``deque(maxlen=...)``).
_BOUNDED_LISTS: Final = ("OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT")

#: The SDK's exemplar filters (``OTEL_METRICS_EXEMPLAR_FILTER``), by exact name.
EXEMPLAR_FILTERS: Final = ("trace_based", "always_on", "always_off")

#: Provider variables and the entry-point group the API loads their value from.
_PROVIDERS: Final = {
    "OTEL_PYTHON_TRACER_PROVIDER": "opentelemetry_tracer_provider",
    "OTEL_PYTHON_METER_PROVIDER": "opentelemetry_meter_provider",
    "OTEL_PYTHON_LOGGER_PROVIDER": "opentelemetry_logger_provider",
}


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`TelemetryConfigError` for the first ``OTEL_*`` value in ``env``
    (the process environment by default) that OpenTelemetry would refuse (the problems
    are generated in order; only the first is looked for)."""
    env = os.environ if env is None else env
    for problem in _problems(env):
        raise problem


def _problems(env: Mapping[str, str]) -> Iterator[TelemetryConfigError]:
    for name in _LIMITS:
        raw = env.get(name, "").strip()
        if not raw:  # unset, or empty: no limit
            continue
        if not _is_int(raw, minimum=0):
            yield TelemetryConfigError(
                name, f"{name}={_shown(env[name])}: a limit must be a non-negative integer (empty for no limit)"
            )
        elif name in _BOUNDED_LISTS and int(raw) > sys.maxsize:  # the SDK's lists cannot hold it
            yield TelemetryConfigError(name, f"{name}={_shown(env[name])}: too large (empty for no limit)")
    for prefix, signal in (("OTEL_BSP", "span"), ("OTEL_BLRP", "log record")):
        yield from _batch_problems(env, prefix, signal)
    exemplars = env.get("OTEL_METRICS_EXEMPLAR_FILTER", "")
    if exemplars and exemplars not in EXEMPLAR_FILTERS:
        yield TelemetryConfigError(
            "OTEL_METRICS_EXEMPLAR_FILTER",
            f"OTEL_METRICS_EXEMPLAR_FILTER={_shown(exemplars)}: not an exemplar filter "
            f"(one of {', '.join(EXEMPLAR_FILTERS)})",
        )
    yield from _propagator_problems(env)
    for name, group in _PROVIDERS.items():
        if name in env:
            yield from _missing(name, env[name], group, env[name], "provider")
    context = env.get("OTEL_PYTHON_CONTEXT")
    if context:
        yield from _missing("OTEL_PYTHON_CONTEXT", context, "opentelemetry_context", context, "context")
    detectors = env.get("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "")
    for name in (n.strip() for n in detectors.split(",")):
        if name and name != "*":
            yield from _missing("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", detectors, "opentelemetry_resource_detector",
                                name, "resource detector", also="*")
    interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "")
    if interval and not _is_wait(interval):
        yield TelemetryConfigError(
            "OTEL_METRIC_EXPORT_INTERVAL",
            f"OTEL_METRIC_EXPORT_INTERVAL={_shown(interval)}: not a number of milliseconds to wait between exports",
        )
    if "prometheus" in env.get("OTEL_METRICS_EXPORTER", "").split(","):
        port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "")
        if port and not (_is_int(port, minimum=0) and int(port) <= 65535):
            yield TelemetryConfigError(
                "OTEL_EXPORTER_PROMETHEUS_PORT",
                f"OTEL_EXPORTER_PROMETHEUS_PORT={_shown(port)}: not a port number (0-65535)",
            )


def export_queue_size(env: Mapping[str, str], prefix: str) -> int | None:
    """The export queue's length the environment asks for (``OTEL_BSP_MAX_QUEUE_SIZE``,
    ``OTEL_BLRP_MAX_QUEUE_SIZE``), or None for this package's default."""
    raw = env.get(f"{prefix}_MAX_QUEUE_SIZE")
    return int(raw) if raw is not None and _is_int(raw, minimum=1) else None


def _batch_problems(env: Mapping[str, str], prefix: str, signal: str) -> Iterator[TelemetryConfigError]:
    """A batch processor's numbers: integers (the SDK parses them with ``int``), the delay,
    the batch size and the queue positive, a batch no larger than the queue."""
    for suffix in ("SCHEDULE_DELAY", "MAX_EXPORT_BATCH_SIZE", "EXPORT_TIMEOUT", "MAX_QUEUE_SIZE"):
        name = f"{prefix}_{suffix}"
        if name not in env:
            continue
        raw = env[name]
        if not _is_int(raw, minimum=None):
            yield TelemetryConfigError(name, f"{name}={_shown(raw)}: not an integer ({signal} export)")
        elif suffix != "EXPORT_TIMEOUT" and int(raw) <= 0:
            yield TelemetryConfigError(name, f"{name}={_shown(raw)}: must be a positive integer")
        elif suffix == "MAX_QUEUE_SIZE" and int(raw) > sys.maxsize:
            yield TelemetryConfigError(name, f"{name}={_shown(raw)}: too large for a queue")
        elif suffix == "SCHEDULE_DELAY" and int(raw) / 1000 > threading.TIMEOUT_MAX:
            # The export thread would die on its first wait (OverflowError), silently.
            yield TelemetryConfigError(name, f"{name}={_shown(raw)}: too long to wait for")
    # A batch must fit in the queue, either of them from the environment or the default.
    queue = export_queue_size(env, prefix) or EXPORT_QUEUE_SIZE
    raw_batch = env.get(f"{prefix}_MAX_EXPORT_BATCH_SIZE")
    batch = int(raw_batch) if raw_batch is not None and _is_int(raw_batch, minimum=1) else None
    if batch is not None and batch > queue:
        yield TelemetryConfigError(
            f"{prefix}_MAX_EXPORT_BATCH_SIZE",
            f"{prefix}_MAX_EXPORT_BATCH_SIZE={_shown(raw_batch or '')}: a batch cannot be larger than "
            f"the export queue ({queue} {signal}s)",
        )
    elif batch is None and raw_batch is None and queue < SDK_EXPORT_BATCH_SIZE:
        yield TelemetryConfigError(
            f"{prefix}_MAX_QUEUE_SIZE",
            f"{prefix}_MAX_QUEUE_SIZE={_shown(env.get(f'{prefix}_MAX_QUEUE_SIZE', ''))}: smaller than an export "
            f"batch ({SDK_EXPORT_BATCH_SIZE} {signal}s; {prefix}_MAX_EXPORT_BATCH_SIZE sets it)",
        )


def _propagator_problems(env: Mapping[str, str]) -> Iterator[TelemetryConfigError]:
    configured = env.get("OTEL_PROPAGATORS")
    if not configured:
        return
    names = [name.strip() for name in configured.split(",")]
    # The API stops at the first "none" (no propagation at all) and loads the rest in order.
    for name in names:
        if name.lower() == "none":
            return
        yield from _missing("OTEL_PROPAGATORS", configured, "opentelemetry_propagator", name, "propagator", also="none")


def _missing(
    variable: str, value: str, group: str, name: str, what: str, *, also: str = ""
) -> Iterator[TelemetryConfigError]:
    """An error when no installed package registers ``name`` in the entry-point ``group``
    (``also``: a name the API itself understands)."""
    if entry_points(group=group, name=name):
        return
    known = ", ".join([*sorted(e.name for e in entry_points(group=group)), *([also] if also else [])])
    yield TelemetryConfigError(
        variable,
        f"{variable}={_shown(value)}: no {what} named {_shown(name)} is installed (known: {known or 'none'})",
    )


def _is_int(raw: str, *, minimum: int | None) -> bool:
    try:
        value = int(raw)
    except ValueError:
        return False
    return minimum is None or value >= minimum


def _is_wait(raw: str) -> bool:
    """A number of milliseconds a thread can wait for (``Event.wait`` overflows beyond
    ``threading.TIMEOUT_MAX``)."""
    try:
        value = float(raw)
    except ValueError:
        return False
    return math.isfinite(value) and value / 1000 <= threading.TIMEOUT_MAX


def _shown(raw: str) -> str:
    """A value as an error message quotes it: escaped (one line), at most 60 characters."""
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")
