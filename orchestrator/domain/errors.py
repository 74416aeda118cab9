"""Typed errors. One root; every error knows its category and, where they apply,
the job, the project, the module and the phase."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from orchestrator.domain.status import ErrorCategory, JobStatus, Phase

__all__ = [
    "CancelPending",
    "IllegalTransition",
    "InvalidRequest",
    "JobNotFound",
    "LockTimeout",
    "ModuleError",
    "OrchestratorError",
    "PersistenceError",
    "QueueError",
    "TransitionConflict",
    "UnknownModule",
]


class OrchestratorError(Exception):
    """The orchestrator failed."""

    category: ClassVar[ErrorCategory] = ErrorCategory.INTERNAL

    def __init__(
        self,
        message: str | None = None,
        *,
        job_id: str | None = None,
        project_id: str | None = None,
        module: str | None = None,
        phase: Phase | None = None,
    ) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        self.job_id = job_id
        self.project_id = project_id
        self.module = module
        self.phase = phase
        super().__init__(self.message)

    def context(self) -> dict[str, Any]:
        """Fields for log records and span attributes."""
        fields: dict[str, Any] = {
            "error_category": str(self.category),
            "error": self.message,
            "job_id": self.job_id,
            "project_id": self.project_id,
            "module": self.module,
            "phase": str(self.phase) if self.phase else None,
        }
        return {k: v for k, v in fields.items() if v is not None}


class InvalidRequest(OrchestratorError, ValueError):
    """The request is not valid."""

    category = ErrorCategory.VALIDATION

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        self.field = field
        super().__init__(message, **kwargs)


class UnknownModule(InvalidRequest):
    """No module of that name is registered."""


class JobNotFound(OrchestratorError, LookupError):
    """No job with that id."""

    category = ErrorCategory.VALIDATION

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}", job_id=job_id)


class IllegalTransition(OrchestratorError):
    """The transition is not allowed by the status machine."""

    category = ErrorCategory.TRANSITION

    def __init__(self, job_id: str, current: JobStatus, target: JobStatus, **kwargs: Any) -> None:
        self.current = current
        self.target = target
        super().__init__(f"job {job_id} cannot go from {current} to {target}", job_id=job_id, **kwargs)


class TransitionConflict(IllegalTransition):
    """Another process changed the job's status first (compare-and-set lost)."""

    def __init__(self, job_id: str, expected: JobStatus, actual: JobStatus, target: JobStatus, **kwargs: Any) -> None:
        super().__init__(job_id, actual, target, **kwargs)
        self.expected = expected
        self.message = (
            f"job {job_id} was {actual}, not {expected}, when moving it to {target}: another process changed it first"
        )
        self.args = (self.message,)


class CancelPending(TransitionConflict):
    """The job's cancellation was asked while it ran: it can only end Cancelled now."""

    def __init__(self, job_id: str, target: JobStatus, reason: str, **kwargs: Any) -> None:
        super().__init__(job_id, JobStatus.RUNNING, JobStatus.RUNNING, target, **kwargs)
        self.reason = reason
        self.message = f"job {job_id} cannot go to {target}: its cancellation was requested ({reason})"
        self.args = (self.message,)


class PersistenceError(OrchestratorError):
    """The job store could not be read or written."""

    category = ErrorCategory.PERSISTENCE

    def __init__(
        self,
        message: str | None = None,
        *,
        error_id: str | None = None,
        transient: bool = False,
        answered: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        #: Ties the error shown to a user to the log record written where it happened.
        self.error_id = error_id
        #: The store could not be reached (or was busy): the same call may succeed later.
        self.transient = transient
        #: The database answered the statement with this error: it was rolled back, nothing
        #: of it was written (False: no answer came, it may have been written).
        self.answered = answered


class LockTimeout(PersistenceError):
    """A statement gave up waiting for a lock another session holds (PostgreSQL's
    ``lock_timeout``): rolled back, nothing written; the same call may succeed later."""

    def __init__(self, message: str | None = None, *, error_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, error_id=error_id, transient=True, answered=True, **kwargs)


def new_error_id() -> str:
    """A short id that ties an error shown to a user to the log record at its source."""
    return secrets.token_hex(4)


class QueueError(OrchestratorError):
    """The job queue failed."""

    category = ErrorCategory.QUEUE


class ModuleError(OrchestratorError):
    """An analysis module reported a failure of its own.

    Module authors raise this (or a subclass) for expected failures, such as a
    malformed input file. Any other exception from module code is a panic.
    """

    category = ErrorCategory.MODULE
