"""The job status machine, phases and error categories: one table, used everywhere."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from orchestrator.domain.events import LifecycleEvent

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "ErrorCategory",
    "JobStatus",
    "Phase",
    "is_legal",
    "lifecycle_event",
]


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Every legal (from -> to). Running -> Queued is recovery only (lease expired or
#: worker shutdown) and increments the attempt.
TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = MappingProxyType(
    {
        JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
        JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
        JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
        JobStatus.COMPLETED: frozenset(),
        JobStatus.FAILED: frozenset(),
        JobStatus.CANCELLED: frozenset(),
    }
)


def is_legal(status_from: JobStatus, status_to: JobStatus) -> bool:
    return status_to in TRANSITIONS[status_from]


def lifecycle_event(status_from: JobStatus | None, status_to: JobStatus) -> LifecycleEvent:
    """The lifecycle event a transition emits."""
    if status_from is None:
        return LifecycleEvent.CREATE
    if status_from is status_to:  # the one history row that changes no status
        return LifecycleEvent.CANCEL_REQUESTED
    if status_to is JobStatus.QUEUED:
        return LifecycleEvent.RECOVER if status_from is JobStatus.RUNNING else LifecycleEvent.ENQUEUE
    return _EVENT_BY_TARGET[status_to]


_EVENT_BY_TARGET: Final[Mapping[JobStatus, LifecycleEvent]] = MappingProxyType(
    {
        JobStatus.RUNNING: LifecycleEvent.START,
        JobStatus.COMPLETED: LifecycleEvent.COMPLETE,
        JobStatus.FAILED: LifecycleEvent.FAIL,
        JobStatus.CANCELLED: LifecycleEvent.CANCEL,
    }
)


class Phase(enum.StrEnum):
    """Where in a job's life something happened (answers "which phase fails most")."""

    CREATE = "create"
    ENQUEUE = "enqueue"
    QUEUED = "queued"
    CLAIM = "claim"
    EXECUTE = "execute"
    FINALIZE = "finalize"
    NOTIFY = "notify"


class ErrorCategory(enum.StrEnum):
    """Why something failed: transition/persistence vs module logic vs the rest."""

    VALIDATION = "validation"
    TRANSITION = "transition"
    PERSISTENCE = "persistence"
    QUEUE = "queue"
    MODULE = "module"
    MODULE_TIMEOUT = "module_timeout"
    MODULE_PANIC = "module_panic"
    #: The job names a module the worker that ran it cannot load (not installed there).
    MODULE_UNAVAILABLE = "module_unavailable"
    CANCELLED = "cancelled"
    WEBHOOK = "webhook"
    INTERNAL = "internal"
