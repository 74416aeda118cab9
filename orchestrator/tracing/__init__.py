"""Durable traces: a job's trace rebuilt from the store when its live export was lost.

* :mod:`~orchestrator.tracing.attempts`: a job's attempts, read from its history;
* :mod:`~orchestrator.tracing.records`: the spans the store describes, with the ids the
  live spans carry (:func:`spans_from_store`, also what ``orchestrator trace`` draws
  when the telemetry files lack a job's spans);
* :mod:`~orchestrator.tracing.emit`: records emitted through a tracer;
* :mod:`~orchestrator.tracing.ledger`: what this process's exporter confirmed;
* :mod:`~orchestrator.tracing.reconciler`: the worker's trace keeper (confirmations
  written, unconfirmed traces rebuilt).

Only the pure parts are re-exported here: the ledger and the reconciler are imported
from their modules (the reconciler depends on the telemetry, which depends on these).
"""

from __future__ import annotations

from orchestrator.tracing.attempts import Attempt, attempts_of
from orchestrator.tracing.records import SpanEvent, SpanRecord, spans_from_store

__all__ = ["Attempt", "SpanEvent", "SpanRecord", "attempts_of", "spans_from_store"]
