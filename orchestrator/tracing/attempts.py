"""A job's attempts, read from its persisted lifecycle history.

Each claim (queued -> running) starts an attempt; the next transition out of running
ends it: a terminal status, or back to the queue (recovery, worker shutdown). An
attempt is *lost* when its worker did not end it: a reaper recovered it after its lease
expired (``lease_expired``), failed it (``worker_lost: ...``) or cancelled it on a
request its dead worker never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.domain import JobStatus, LifecycleEntry

__all__ = ["LEASE_EXPIRED", "Attempt", "attempts_of"]

#: The reason a reaper gives when it returns a lost attempt's job to the queue.
LEASE_EXPIRED = "lease_expired"


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    #: The worker that claimed it.
    worker_id: str | None
    #: When the job entered the queue it was claimed from.
    queued_ns: int
    #: When it was claimed.
    started_ns: int
    #: The history row that ended it (None: still running).
    ended: LifecycleEntry | None
    #: Its worker did not end it (see the module's docstring).
    lost: bool

    @property
    def ended_ns(self) -> int | None:
        return self.ended.at_ns if self.ended is not None else None


def attempts_of(history: Sequence[LifecycleEntry]) -> list[Attempt]:
    """Every attempt of the job, oldest first (the last may still be running)."""
    found: list[Attempt] = []
    claim: LifecycleEntry | None = None
    queued_ns: int | None = None
    for entry in history:
        if not entry.is_transition:
            continue  # a cancellation request changes no status
        if claim is not None and entry.status_from is JobStatus.RUNNING:
            found.append(_attempt(claim, queued_ns, entry))
            claim = None
        if entry.status_to is JobStatus.QUEUED:
            queued_ns = entry.at_ns
        elif entry.status_from is JobStatus.QUEUED and entry.status_to is JobStatus.RUNNING:
            claim = entry
    if claim is not None:
        found.append(_attempt(claim, queued_ns, None))
    return found


def _attempt(claim: LifecycleEntry, queued_ns: int | None, ended: LifecycleEntry | None) -> Attempt:
    return Attempt(
        number=claim.attempt,
        worker_id=claim.worker_id,
        queued_ns=claim.at_ns if queued_ns is None else queued_ns,
        started_ns=claim.at_ns,
        ended=ended,
        lost=ended is not None and _lost(claim, ended),
    )


def _lost(claim: LifecycleEntry, ended: LifecycleEntry) -> bool:
    if ended.reason == LEASE_EXPIRED or ended.reason.startswith("worker_lost"):
        return True
    # Ended by another process than the one that ran it: only a reaper does that.
    return ended.worker_id != claim.worker_id
