"""Lifecycle event names: what a job's history records and its root span shows.

They belong to the domain (every persisted history row carries one, and the store's
own tables list them); the telemetry vocabulary re-exports them for spans, logs and
dashboards.
"""

from __future__ import annotations

import enum

__all__ = ["LifecycleEvent"]


class LifecycleEvent(enum.StrEnum):
    """Job lifecycle events: history rows, span events on the job's root span, log event names."""

    CREATE = "job.lifecycle.create"
    ENQUEUE = "job.lifecycle.enqueue"
    START = "job.lifecycle.start"
    COMPLETE = "job.lifecycle.complete"
    FAIL = "job.lifecycle.fail"
    CANCEL = "job.lifecycle.cancel"
    #: Running -> Queued when a worker's lease expired or the worker shut down.
    RECOVER = "job.lifecycle.recover"
    #: A cancellation was asked for a Running job (who, why, when); its worker ends it
    #: Cancelled. Not a status change: the history row goes from running to running.
    CANCEL_REQUESTED = "job.lifecycle.cancel_requested"
