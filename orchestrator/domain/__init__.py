"""The domain: jobs, the status machine, module results and typed errors."""

from __future__ import annotations

from orchestrator.domain.errors import (
    CancelPending,
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    LockTimeout,
    ModuleError,
    OrchestratorError,
    PersistenceError,
    QueueError,
    TransitionConflict,
    UnknownModule,
)
from orchestrator.domain.job import (
    FailurePolicy,
    Job,
    JobOptions,
    LifecycleEntry,
    ModuleOutcome,
    ModuleResult,
    TraceContext,
    Transition,
    now_ns,
)
from orchestrator.domain.status import (
    TERMINAL,
    TRANSITIONS,
    ErrorCategory,
    JobStatus,
    Phase,
    is_legal,
    lifecycle_event,
)

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "CancelPending",
    "ErrorCategory",
    "FailurePolicy",
    "IllegalTransition",
    "InvalidRequest",
    "Job",
    "JobNotFound",
    "JobOptions",
    "JobStatus",
    "LifecycleEntry",
    "LockTimeout",
    "ModuleError",
    "ModuleOutcome",
    "ModuleResult",
    "OrchestratorError",
    "PersistenceError",
    "Phase",
    "QueueError",
    "TraceContext",
    "Transition",
    "TransitionConflict",
    "UnknownModule",
    "is_legal",
    "lifecycle_event",
    "now_ns",
]
