"""The job record, its lifecycle history and module results (plain dataclasses)."""

from __future__ import annotations

import enum
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.events import LifecycleEvent
from orchestrator.domain.status import ErrorCategory, JobStatus, Phase, lifecycle_event

__all__ = [
    "FailurePolicy",
    "Job",
    "JobOptions",
    "LifecycleEntry",
    "ModuleBudget",
    "ModuleOutcome",
    "ModuleResult",
    "TraceContext",
    "Transition",
    "first_id_at",
    "new_job_id",
    "now_ns",
]

JSON = Any


def now_ns() -> int:
    """Wall-clock time in nanoseconds since the epoch (the unit OpenTelemetry uses)."""
    return time.time_ns()


_MS_LIMIT = (1 << 48) - 1


def new_job_id(created_ns: int | None = None) -> str:
    """A uuid7 whose time is the job's creation time (to the millisecond; now without
    it): ids sort by creation, which keeps the jobs index append-mostly, and a listing of
    the jobs created since a moment starts at that moment's first id (`first_id_at`).
    Within one millisecond the order is random (so is "newest first")."""
    ms = min(max((now_ns() if created_ns is None else created_ns) // 1_000_000, 0), _MS_LIMIT)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def first_id_at(at_ns: int) -> str:
    """The lowest id a job created at or after ``at_ns`` can have: that moment's time
    digits alone (a string sorts below every longer one that starts with it)."""
    digits = f"{min(max(at_ns // 1_000_000, 0), _MS_LIMIT):012x}"
    return f"{digits[:8]}-{digits[8:]}"


class FailurePolicy(enum.StrEnum):
    #: Every module runs; the job fails if any failed; all results are kept.
    COMPLETE_ALL = "complete_all"
    #: The first failure cancels the modules still running.
    FAIL_FAST = "fail_fast"


class ModuleOutcome(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    PANIC = "panic"
    CANCELLED = "cancelled"

    @property
    def failed(self) -> bool:
        return self in (ModuleOutcome.ERROR, ModuleOutcome.TIMEOUT, ModuleOutcome.PANIC)

    @property
    def category(self) -> ErrorCategory | None:
        return _CATEGORY_BY_OUTCOME.get(self)


_CATEGORY_BY_OUTCOME = {
    ModuleOutcome.ERROR: ErrorCategory.MODULE,
    ModuleOutcome.TIMEOUT: ErrorCategory.MODULE_TIMEOUT,
    ModuleOutcome.PANIC: ErrorCategory.MODULE_PANIC,
    ModuleOutcome.CANCELLED: ErrorCategory.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class ModuleBudget:
    """A job's own numbers for one module, in seconds (None: the worker's, scaled to the
    tree; see ``orchestrator.modules.budget``). Used as given: not scaled."""

    timeout_s: float | None = None
    expected_s: float | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"timeout_s": self.timeout_s, "expected_s": self.expected_s}

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> ModuleBudget:
        return cls(timeout_s=data.get("timeout_s"), expected_s=data.get("expected_s"))


@dataclass(frozen=True, slots=True)
class JobOptions:
    failure_policy: FailurePolicy = FailurePolicy.COMPLETE_ALL
    #: Modules of this job that may run at once (None: the worker's setting).
    concurrency: int | None = None
    #: Per-module options, passed to each module as its context's ``options``.
    module_options: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    #: Per-module timeout and expected runtime for this project.
    module_budgets: Mapping[str, ModuleBudget] = field(default_factory=dict)
    #: Extra gitignore-style patterns the walk leaves out (``!pattern`` brings one back).
    ignore: tuple[str, ...] = ()
    #: False: no default ignores (VCS folders, virtualenvs, node_modules, build outputs).
    default_ignores: bool = True
    #: Honour the project's .gitignore files (None: the worker's setting).
    gitignore: bool | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "failure_policy": str(self.failure_policy),
            "concurrency": self.concurrency,
            "module_options": {k: dict(v) for k, v in self.module_options.items()},
            "module_budgets": {k: v.to_json() for k, v in self.module_budgets.items()},
            "ignore": list(self.ignore),
            "default_ignores": self.default_ignores,
            "gitignore": self.gitignore,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> JobOptions:
        return cls(
            failure_policy=FailurePolicy(data.get("failure_policy", FailurePolicy.COMPLETE_ALL)),
            concurrency=data.get("concurrency"),
            module_options=data.get("module_options") or {},
            module_budgets={k: ModuleBudget.from_json(v) for k, v in (data.get("module_budgets") or {}).items()},
            ignore=tuple(data.get("ignore") or ()),
            default_ignores=data.get("default_ignores", True),
            gitignore=data.get("gitignore"),
        )


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The job's trace, decided at creation and persisted so every process agrees.

    ``span_id`` is the id of the job's root span, which is emitted once, by the
    process that performs the terminal transition, starting at the job's creation.
    """

    trace_id: str
    span_id: str
    sampled: bool
    #: A caller's W3C traceparent, linked from the root span.
    link: str | None = None

    @classmethod
    def new(cls, *, sampled: bool = True, link: str | None = None) -> TraceContext:
        drawn = int.from_bytes(secrets.token_bytes(24), "big")  # both ids from one draw of the OS's source
        trace_id = drawn >> 64 or 1
        span_id = drawn & 0xFFFF_FFFF_FFFF_FFFF or 1
        return cls(format(trace_id, "032x"), format(span_id, "016x"), sampled, link)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


@dataclass(frozen=True, slots=True)
class ModuleResult:
    module: str
    version: str
    outcome: ModuleOutcome
    started_ns: int
    duration_ms: float
    expected_ms: float
    timeout_ms: float
    attempt: int
    summary: Mapping[str, JSON] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def overran(self) -> bool:
        """It ran longer than expected (a timed-out run did too). A cancelled run was
        stopped from outside: its time says nothing about the module."""
        return self.outcome is not ModuleOutcome.CANCELLED and self.duration_ms > self.expected_ms

    def to_json(self) -> dict[str, JSON]:
        return {
            "module": self.module,
            "version": self.version,
            "outcome": str(self.outcome),
            "started_ns": self.started_ns,
            "duration_ms": self.duration_ms,
            "expected_ms": self.expected_ms,
            "timeout_ms": self.timeout_ms,
            "attempt": self.attempt,
            "overran": self.overran,
            "summary": dict(self.summary),
            "error": self.error,
            "error_type": self.error_type,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> ModuleResult:
        return cls(
            module=data["module"],
            version=data["version"],
            outcome=ModuleOutcome(data["outcome"]),
            started_ns=_whole(data["started_ns"]),
            duration_ms=_finite(data["duration_ms"]),
            expected_ms=_finite(data["expected_ms"]),
            timeout_ms=_finite(data["timeout_ms"]),
            attempt=_whole(data.get("attempt", 1)),
            summary=data.get("summary") or {},
            error=data.get("error"),
            error_type=data.get("error_type"),
        )


def _finite(value: JSON) -> float:
    """A stored number read back; anything else (the stored form of a NaN, a string) is
    refused here, so the result is marked unreadable instead of failing a later read."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return value


def _whole(value: JSON) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a whole number: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    project_id: str
    source: str
    modules: tuple[str, ...]
    options: JobOptions
    status: JobStatus
    attempt: int
    created_ns: int
    #: When the job entered its current status.
    status_ns: int
    trace: TraceContext
    queued_ns: int | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    reason: str | None = None
    error_category: ErrorCategory | None = None
    error_phase: Phase | None = None
    results: tuple[ModuleResult, ...] = ()
    lease_owner: str | None = None
    lease_expires_ns: int | None = None
    #: The reason of a pending cancellation request of a Running job (its worker ends it
    #: Cancelled), with who asked and when.
    cancel_requested: str | None = None
    cancel_requested_by: str | None = None
    cancel_requested_ns: int | None = None
    #: The worker (or process) that made the latest transition.
    worker_id: str | None = None
    #: Set when a stored field could not be read back: what was damaged (the rest of the
    #: job is as stored). Such a job can still be listed, cancelled and pruned.
    damaged: str | None = None

    @classmethod
    def new(
        cls,
        *,
        project_id: str,
        source: str,
        modules: tuple[str, ...],
        options: JobOptions,
        trace: TraceContext,
        created_ns: int | None = None,
    ) -> Job:
        created = created_ns or now_ns()
        return cls(
            id=new_job_id(created),
            project_id=project_id,
            source=source,
            modules=modules,
            options=options,
            status=JobStatus.PENDING,
            attempt=1,
            created_ns=created,
            status_ns=created,
            trace=trace,
        )

    def log_fields(self) -> dict[str, JSON]:
        return {"job_id": self.id, "project_id": self.project_id}


@dataclass(frozen=True, slots=True)
class Transition:
    """One status change, as the workflow asks the store to apply it (atomically:
    compare-and-set on status and attempt, job update and history row together)."""

    job_id: str
    status_from: JobStatus
    status_to: JobStatus
    reason: str
    at_ns: int
    #: Time spent in ``status_from``.
    duration_ms: float
    #: The attempt the caller believes is current: a fencing token, so a worker whose
    #: lease was taken over cannot finish a job another worker now runs.
    attempt: int
    new_attempt: int
    worker_id: str | None = None
    error_category: ErrorCategory | None = None
    error_phase: Phase | None = None
    results: tuple[ModuleResult, ...] | None = None
    lease_owner: str | None = None
    lease_expires_ns: int | None = None


@dataclass(frozen=True, slots=True)
class LifecycleEntry:
    """One row of a job's persisted lifecycle history: a transition, or a request that
    changes no status (a cancellation asked of a Running job: running -> running)."""

    job_id: str
    seq: int
    status_from: JobStatus | None
    status_to: JobStatus
    reason: str
    at_ns: int
    #: Time spent in ``status_from`` (0 for a request that changes no status).
    duration_ms: float
    attempt: int
    #: The worker that made the transition, or who made the request.
    worker_id: str | None = None
    event: LifecycleEvent | None = None

    def __post_init__(self) -> None:
        if self.event is None:
            object.__setattr__(self, "event", lifecycle_event(self.status_from, self.status_to))

    @property
    def is_transition(self) -> bool:
        """False for a request recorded in the history that changed no status."""
        return self.status_from is not self.status_to
