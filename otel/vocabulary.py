"""The one telemetry vocabulary: event names, attribute keys, span names, metric names.

Spans, span events, log records, metrics, tests, the README and the Grafana dashboards
all take their names from here. Backends rewrite some of them (Prometheus turns dots
into underscores, appends the unit and ``_total``); :func:`prometheus_name` computes
that translation so dashboards and rules can be checked against this module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

# Lifecycle event names belong to the domain (history rows carry them); re-exported here
# so that spans, logs, dashboards and tests take every name from this module.
from orchestrator.domain.events import LifecycleEvent

__all__ = [
    "INSTRUMENTATION_SCOPE",
    "METRICS",
    "SECONDS_BUCKETS",
    "Attr",
    "LifecycleEvent",
    "LinkKind",
    "Metric",
    "MetricKind",
    "ModuleEvent",
    "OperationEvent",
    "SpanName",
    "prometheus_name",
]

INSTRUMENTATION_SCOPE: Final = "orchestrator"


class ModuleEvent(enum.StrEnum):
    """Module execution events: span events on module spans and log event names."""

    SPAWN = "job.module.spawn"
    COMPLETE = "job.module.complete"
    ERROR = "job.module.error"
    PANIC = "job.module.panic"
    TIMEOUT = "job.module.timeout"
    OVERRUN = "job.module.overrun"
    #: A module passed 25, 50 or 75 % of its work (at most three per module span).
    PROGRESS = "job.module.progress"
    #: The aggregate of a fan-out: how many modules finished, failed, were cancelled.
    FANOUT = "job.module.fanout"


class OperationEvent(enum.StrEnum):
    """Log event names of public entry points (the ``instrument`` decorator) and the worker."""

    START = "operation.start"
    FINISH = "operation.finish"
    ERROR = "operation.error"
    CANCEL_REQUESTED = "job.cancel_requested"
    #: A transition the workflow did not apply: illegal, lost to another process, or
    #: turned into Cancelled by a pending cancellation (warning, with the error's category).
    TRANSITION_REFUSED = "job.transition.refused"
    #: A malformed ``traceparent`` given at creation: the job is created, unlinked.
    TRACEPARENT_IGNORED = "job.traceparent.ignored"
    WORKER_START = "worker.start"
    WORKER_STOP = "worker.stop"
    LEASE_LOST = "worker.lease_lost"
    STORE_RETRY = "store.retry"
    PRUNED = "store.pruned"
    FORCED_EXIT = "worker.forced_exit"
    #: The worker's event loop was held (a module blocking it), and when it turns again.
    LOOP_BLOCKED = "worker.loop_blocked"
    #: A module that ignored its cancellation past the grace, left running (warning), and
    #: when it ends at last (info, ``ended``).
    MODULE_ABANDONED = "job.module.abandoned"
    #: A worker stopping because too many modules it abandoned still run (error).
    WORKER_RECYCLE = "worker.recycle"
    TELEMETRY_EXPORT_FAILED = "telemetry.export_failed"
    #: The Prometheus scrape endpoint a process started (OTEL_METRICS_EXPORTER=prometheus).
    TELEMETRY_PROMETHEUS = "telemetry.prometheus"
    #: A job's trace was rebuilt from the store and exported again (its live export was lost).
    TRACE_RECONSTRUCTED = "job.trace.reconstructed"
    WEBHOOK_DELIVERY = "webhook.delivery"
    WEBHOOK_SUBSCRIBED = "webhook.subscribed"
    #: ``serve`` at start: authentication off, no source roots, Host names accepted.
    API_SECURITY = "api.security"
    #: A job creation refused by the queue cap or the per-client rate limit.
    API_LIMITED = "api.limited"


class Attr:
    """Attribute keys shared by span attributes, span events, log records and metrics.

    Identifier keys (job_id, project_id) never become metric attributes.
    """

    JOB_ID: Final = "job_id"
    PROJECT_ID: Final = "project_id"
    MODULE: Final = "module"
    MODULE_VERSION: Final = "module_version"
    STATUS_FROM: Final = "status_from"
    STATUS_TO: Final = "status_to"
    STATUS: Final = "status"
    REASON: Final = "reason"
    DURATION_MS: Final = "duration_ms"
    ERROR: Final = "error"
    ERROR_TYPE: Final = "error.type"
    ERROR_CATEGORY: Final = "error_category"
    PHASE: Final = "phase"
    OUTCOME: Final = "outcome"
    ATTEMPT: Final = "attempt"
    MODULE_COUNT: Final = "module_count"
    WORKER_ID: Final = "worker_id"
    OPERATION: Final = "operation"
    EVENT: Final = "event"
    EXPECTED_MS: Final = "expected_ms"
    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    CANCELLED: Final = "cancelled"
    TOTAL: Final = "total"
    #: Units of work a module reported done, and in all (files for the built-in modules).
    PROGRESS_DONE: Final = "progress_done"
    PROGRESS_TOTAL: Final = "progress_total"
    #: Files in the job's index (after ignores), their bytes, and what the walk left out.
    INDEX_FILES: Final = "index_files"
    INDEX_BYTES: Final = "index_bytes"
    INDEX_IGNORED: Final = "index_ignored"
    #: How many reference-size projects the tree is worth (the budgets' scale).
    BUDGET_SCALE: Final = "budget_scale"
    TIMEOUT_MS: Final = "timeout_ms"
    TRACE_ID: Final = "trace_id"
    SPAN_ID: Final = "span_id"
    #: The webhook delivery span: our ids, and OpenTelemetry's semantic-convention keys.
    WEBHOOK_DELIVERY_ID: Final = "webhook.delivery_id"
    WEBHOOK_SUBSCRIPTION_ID: Final = "webhook.subscription_id"
    SERVER_ADDRESS: Final = "server.address"
    HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
    #: On a span link: what the linked span is to this one (:class:`LinkKind`).
    LINK_KIND: Final = "link.kind"
    #: True on a span rebuilt from the store after its live export was lost.
    RECONSTRUCTED: Final = "reconstructed"


class LinkKind(enum.StrEnum):
    """Values of :attr:`Attr.LINK_KIND`: each job is a trace root, so traces that lead
    to it are linked, not parents."""

    #: On a job's root span: the trace of whoever created the job (a request, a CLI run).
    CALLER = "caller"
    #: On a request's span: the root span of the job it created.
    JOB = "job"


class SpanName:
    """Low-cardinality span names; ids and module names live in attributes."""

    JOB: Final = "job"
    CREATE: Final = "job.create"
    QUEUED: Final = "job.queued"
    EXECUTE: Final = "job.execute"
    MODULE: Final = "job.module"
    FINALIZE: Final = "job.finalize"
    NOTIFY: Final = "job.notify"
    WEBHOOK_DELIVERY: Final = "webhook.deliver"


class MetricKind(enum.StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    UP_DOWN_COUNTER = "updowncounter"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: MetricKind
    unit: str
    description: str
    attributes: tuple[str, ...]

    @property
    def buckets(self) -> tuple[float, ...] | None:
        """Histogram bucket bounds. The SDK's defaults (0, 5, 10, 25, ... 10000) are made
        for milliseconds; durations here are seconds, from milliseconds to minutes."""
        if self.kind is MetricKind.HISTOGRAM and self.unit == "s":
            return SECONDS_BUCKETS
        return None


#: Bucket bounds of every duration histogram, in seconds.
SECONDS_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


class Metric:
    """Metric names (OpenTelemetry form). No job or project ids in attributes."""

    TRANSITIONS: Final = MetricSpec(
        "orchestrator.job.transitions",
        MetricKind.COUNTER,
        "{transition}",
        "Job status transitions.",
        (Attr.STATUS_FROM, Attr.STATUS_TO),
    )
    PHASE_DURATION: Final = MetricSpec(
        "orchestrator.job.phase.duration",
        MetricKind.HISTOGRAM,
        "s",
        "Time spent in each phase of a job (statuses and create/execute/finalize).",
        (Attr.PHASE,),
    )
    JOB_DURATION: Final = MetricSpec(
        "orchestrator.job.duration",
        MetricKind.HISTOGRAM,
        "s",
        "Job duration from creation to its terminal status.",
        (Attr.STATUS,),
    )
    MODULE_DURATION: Final = MetricSpec(
        "orchestrator.module.duration",
        MetricKind.HISTOGRAM,
        "s",
        "Module run duration.",
        (Attr.MODULE, Attr.OUTCOME),
    )
    MODULE_EXPECTED: Final = MetricSpec(
        "orchestrator.module.expected_runtime",
        MetricKind.GAUGE,
        "s",
        "Expected runtime declared by each module.",
        (Attr.MODULE,),
    )
    MODULE_OVERRUNS: Final = MetricSpec(
        "orchestrator.module.overruns",
        MetricKind.COUNTER,
        "{run}",
        "Module runs that exceeded their expected runtime.",
        (Attr.MODULE,),
    )
    FAILURES: Final = MetricSpec(
        "orchestrator.job.failures",
        MetricKind.COUNTER,
        "{failure}",
        "Job failures by phase and error category.",
        (Attr.PHASE, Attr.ERROR_CATEGORY),
    )
    ACTIVE_JOBS: Final = MetricSpec(
        "orchestrator.jobs.active",
        MetricKind.UP_DOWN_COUNTER,
        "{job}",
        "Jobs being executed by this process.",
        (),
    )
    QUEUE_DEPTH: Final = MetricSpec(
        "orchestrator.queue.depth",
        MetricKind.GAUGE,
        "{job}",
        "Jobs waiting in the queue.",
        (),
    )
    QUEUE_WAIT: Final = MetricSpec(
        "orchestrator.queue.wait",
        MetricKind.HISTOGRAM,
        "s",
        "Time a job waited in the queue before a worker claimed it.",
        (),
    )
    RECOVERIES: Final = MetricSpec(
        "orchestrator.job.recoveries",
        MetricKind.COUNTER,
        "{job}",
        "Running jobs returned to the queue (lease expired, worker shutdown).",
        (Attr.REASON,),
    )
    WEBHOOK_DELIVERIES: Final = MetricSpec(
        "orchestrator.webhook.deliveries",
        MetricKind.COUNTER,
        "{delivery}",
        "Webhook delivery attempts by outcome.",
        (Attr.OUTCOME,),
    )
    WEBHOOK_LATENCY: Final = MetricSpec(
        "orchestrator.webhook.duration",
        MetricKind.HISTOGRAM,
        "s",
        "Webhook delivery attempt duration.",
        (Attr.OUTCOME,),
    )
    TRACES_RECONSTRUCTED: Final = MetricSpec(
        "orchestrator.traces.reconstructed",
        MetricKind.COUNTER,
        "{trace}",
        "Job traces rebuilt from the store and exported again, by why their live export was lost.",
        (Attr.REASON,),
    )
    TELEMETRY_EXPORT_FAILURES: Final = MetricSpec(
        "orchestrator.telemetry.export_failures",
        MetricKind.COUNTER,
        "{batch}",
        "Telemetry batches that could not be exported.",
        ("signal",),
    )


METRICS: Final[tuple[MetricSpec, ...]] = tuple(
    value for value in vars(Metric).values() if isinstance(value, MetricSpec)
)

_UNIT_SUFFIX: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


def prometheus_name(spec: MetricSpec) -> str:
    """The name Prometheus gives a metric received over OTLP or scraped from the SDK.

    Dots become underscores, the unit is appended (curly-brace units are dropped),
    and counters get ``_total``. Histograms add ``_bucket``, ``_sum`` and ``_count``.
    """
    name = spec.name.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(spec.unit)
    if suffix and not name.endswith(suffix):
        name = f"{name}_{suffix}"
    if spec.kind is MetricKind.COUNTER:
        name = f"{name}_total"
    return name
