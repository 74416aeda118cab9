"""The trace keeper of a worker: writes this process's export confirmations and rebuilds
the traces nobody confirmed.

Every worker runs one, beside its reaper:

* every ``flush_seconds`` (only when something changed, and at most one transaction):
  the ledger's watermark, the jobs whose spans it lost, the rebuilt traces it confirmed;
* every ``reconcile_seconds``: claim (a compare-and-set on the job row, so concurrent
  reconcilers never rebuild the same job at once) terminal jobs that ended more than
  ``grace_seconds`` ago and whose trace is flagged lost or sits above the watermark of an
  emitter whose watermark has not moved for the grace period; rebuild their spans from
  the store (:func:`~orchestrator.tracing.records.spans_from_store`, the live ids), emit
  them marked ``reconstructed``, count them and log each; the ledger records them done
  once this process's exporter confirmed every span. A rebuild whose export fails is
  left to its claim's expiry and retried, by this worker or another; while this
  process's exports fail, a pass rebuilds one trace only (a probe for the recovery).

Logs and metrics are never re-emitted: a counter incremented again would count the job
twice; the trace is the signal that is made durable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread

from orchestrator.domain import OrchestratorError, now_ns
from orchestrator.stores import JobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.tracing.emit import emit_spans
from orchestrator.tracing.ledger import DeliveryLedger
from orchestrator.tracing.records import spans_from_store
from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["TraceConfig", "TraceKeeper", "export_window_seconds", "settle"]

log = logging.getLogger(__name__)

#: How long an emitter row stays after it went silent with nothing left to rebuild.
_EMITTER_RETENTION_S = 24 * 3600.0
_PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class TraceConfig:
    #: A job's trace is rebuilt when its export is still unconfirmed this long after it
    #: ended (and its emitter's watermark has not moved for as long).
    grace_seconds: float = 60.0
    #: Seconds between reconciler passes.
    reconcile_seconds: float = 15.0
    #: Jobs claimed at once; a pass claims again (up to ``rounds`` times) while full
    #: batches come back (a backlog after a long collector outage).
    batch: int = 100
    rounds: int = 5
    #: How long a span may take from its end to the exporter's answer when all is well:
    #: the batch processor's delay plus the exporter's timeout (from OTEL_BSP_SCHEDULE_DELAY
    #: and OTEL_EXPORTER_OTLP_TIMEOUT; see :func:`export_window_seconds`).
    export_seconds: float = 15.0

    @property
    def flush_seconds(self) -> float:
        """Seconds between watermark writes (each only when something changed)."""
        return min(1.0, self.grace_seconds / 4)

    @property
    def give_up_seconds(self) -> float:
        """A span neither confirmed nor failed after this long was dropped (never before
        a healthy export could have answered)."""
        return max(self.grace_seconds / 2, self.export_seconds + 1)

    @property
    def claim_seconds(self) -> float:
        """How long a reconciler holds the jobs it rebuilds before others may (long
        enough for its own export to be confirmed and recorded)."""
        return max(self.grace_seconds, 3 * self.reconcile_seconds, self.give_up_seconds + self.flush_seconds)


def export_window_seconds(env: Mapping[str, str]) -> float:
    """The batch span processor's delay plus the span exporter's timeout, as the
    standard variables set them (the SDK's defaults: 5 s and 10 s)."""

    def number(names: tuple[str, ...], default: float) -> float:
        for name in names:
            try:
                return float(env[name])
            except (KeyError, ValueError):
                continue
        return default

    delay_ms = number(("OTEL_BSP_SCHEDULE_DELAY",), 5000.0)
    timeout_s = number(("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10.0)
    return delay_ms / 1000 + timeout_s


class TraceKeeper:
    def __init__(
        self,
        store: JobStore,
        telemetry: JobTelemetry,
        ledger: DeliveryLedger,
        config: TraceConfig = TraceConfig(),
        *,
        owner: str,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.ledger = ledger
        self.config = config
        self.owner = owner
        self._clock = clock
        self.rebuilt = 0
        self._outage = logs.RateLimitedLog(30.0)
        self._failure = logs.RateLimitedLog(30.0)
        self._pruned_at = time.monotonic()

    async def run(self) -> None:
        """Flush and reconcile until cancelled; store trouble is logged and retried."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._every, self.config.flush_seconds, self.flush, "flush")
            tg.start_soon(self._every, self.config.reconcile_seconds, self.reconcile, "reconcile")

    async def _every(self, seconds: float, step: Callable[[], Awaitable[object]], what: str) -> None:
        while True:
            await anyio.sleep(seconds)
            try:
                await step()
            except OrchestratorError as exc:
                if self._outage.ready():
                    logs.event(
                        log,
                        logging.WARNING,
                        OperationEvent.STORE_RETRY,
                        f"trace {what} could not reach the store; retrying: {exc}",
                        operation=f"traces.{what}",
                        error_category=str(exc.category),
                        suppressed=self._outage.take_suppressed(),
                    )
            except Exception as exc:  # noqa: BLE001 - traces must never take the worker down
                if self._failure.ready():
                    logs.event(
                        log,
                        logging.ERROR,
                        OperationEvent.ERROR,
                        f"trace {what} failed unexpectedly; retrying: {exc}",
                        exc_info=exc,
                        operation=f"traces.{what}",
                        error_category="internal",
                        suppressed=self._failure.take_suppressed(),
                    )

    async def flush(self) -> None:
        await self.ledger.flush(self.store)

    async def reconcile(self) -> int:
        """One pass; returns how many traces it rebuilt and emitted."""
        rebuilt = 0
        # While the span exporter fails (the collector is down), a rebuilt trace is lost
        # again: claimed anew once its claim expires, rebuilt and logged again, as long as
        # the outage lasts. A pass then rebuilds one trace, which probes for the recovery
        # (an idle worker exports nothing else); once an export went through, passes
        # rebuild at full speed again.
        batch, rounds = (1, 1) if self.ledger.failing else (self.config.batch, self.config.rounds)
        for _ in range(rounds):
            claimed, count = await self._round(batch)
            rebuilt += count
            if claimed < batch:
                break
        if time.monotonic() - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            retention = max(_EMITTER_RETENTION_S, 10 * self.config.grace_seconds)
            await self.store.trace_prune_emitters(before_ns=self._clock() - int(retention * 1e9))
        return rebuilt

    async def _round(self, batch: int) -> tuple[int, int]:
        """Claim up to ``batch`` jobs and rebuild them: (claimed, rebuilt)."""
        now = self._clock()
        claimed = await self.store.trace_claim(
            owner=self.owner,
            now_ns=now,
            before_ns=now - int(self.config.grace_seconds * 1e9),
            expires_ns=now + int(self.config.claim_seconds * 1e9),
            limit=batch,
        )
        rebuilt = 0
        if claimed:
            histories = await self.store.history_many([job.id for job, _ in claimed])
            for job, reason in claimed:
                spans = spans_from_store(job, histories.get(job.id, []))
                # (No history left, nothing to rebuild: expecting nothing records it done.)
                self.ledger.expect(job.id, job.trace.trace_id, [s.span_id for s in spans])
                if spans:
                    emit_spans(self.telemetry.tracer, spans)
                    self.telemetry.trace_reconstructed(job, spans=len(spans), reason=reason)
                    rebuilt += 1
        self.rebuilt += rebuilt
        return len(claimed), rebuilt


async def settle(ledger: DeliveryLedger, store: JobStore, *, timeout_s: float = 2.0) -> None:
    """On the way out: export what the pipeline holds and write the confirmations, so a
    process that stops cleanly leaves nothing to rebuild. Bounded by ``timeout_s``; what
    does not make it is rebuilt by a reconciler after the grace period."""
    if not ledger.unsettled():
        return
    observer = ledger.observer
    with anyio.move_on_after(timeout_s, shield=True):
        # Waiting for a collector that is down would only delay the exit: what it did not
        # take is flagged lost (or left to the watermark) and rebuilt later.
        if observer is not None and not ledger.failing:
            await anyio.to_thread.run_sync(observer.force_flush, int(timeout_s * 1000), abandon_on_cancel=True)
        # A store error is logged where it happened; a reconciler covers what was not written.
        with contextlib.suppress(OrchestratorError):
            await ledger.flush(store)
