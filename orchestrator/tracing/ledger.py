"""What this process's span exporter confirmed: the bookkeeping behind durable traces.

One :class:`DeliveryLedger` per observed span pipeline (one per process in production).
It is the emitter of the process's root spans: the terminal transition of a sampled job
writes the ledger's ``emitter_id`` and a sequence number from :meth:`DeliveryLedger.begin`
in its own UPDATE. The ledger then follows, in memory, every span of a job this process
hands to its pipeline until the exporter confirms or fails it:

* a root is *confirmed* once the root span and every other span of that trace emitted
  here were exported; the watermark (written to the store at most once per flush, never
  per job) is the highest number below which every root is confirmed;
* a root whose trace had a span fail or dropped (a full queue shows as a span never
  confirmed within ``give_up_s``) is *lost*: its job is flagged in the store in the same
  transaction that moves the watermark past it, so the watermark never passes a root
  that did not reach the collector;
* a span lost for a job this process does not end (a create span, a claim's queue wait)
  flags that job too;
* the reconciler's own re-exports are followed the same way: a rebuilt trace is recorded
  as done only once every one of its spans was confirmed.

A process killed between a root's emission and its confirmation leaves that root above
its last written watermark: a reconciler rebuilds it after the grace period.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from orchestrator.domain import now_ns
from orchestrator.stores import JobStore
from otel.setup import SpanExportObserver, span_export_observer
from otel.vocabulary import Attr, SpanName

__all__ = ["DeliveryLedger", "Writes", "ledger_for", "new_emitter_id"]


def new_emitter_id() -> str:
    """``host:pid:random``: unique per process start, readable by an operator."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


_JOB_PREFIX = f"{SpanName.JOB}."


def _job_span(span: ReadableSpan) -> tuple[int, int, str] | None:
    """(trace id, span id, job id) of a job's span (``job`` and ``job.*``), else None."""
    name, ctx = span.name, span.context
    if ctx is None or not (name == SpanName.JOB or name.startswith(_JOB_PREFIX)):
        return None
    attributes = span.attributes  # (no truth test: that takes the attributes' lock)
    job_id = attributes.get(Attr.JOB_ID) if attributes is not None else None
    return (ctx.trace_id, ctx.span_id, job_id) if isinstance(job_id, str) else None


@dataclass
class _Root:
    job_id: str
    since: float
    trace_id: int | None = None
    span_id: int | None = None
    seen: bool = False
    confirmed: bool = False


@dataclass
class _Trace:
    job_id: str
    #: span id -> when it entered the pipeline (monotonic seconds)
    outstanding: dict[int, float] = field(default_factory=dict)
    failed: bool = False
    root_seq: int | None = None


@dataclass
class _Rebuild:
    job_id: str
    pending: set[int]
    since: float


@dataclass(frozen=True)
class Writes:
    """What a flush writes: the new watermark (None: unchanged), the jobs to flag lost,
    the rebuilt jobs to record done."""

    confirmed_seq: int | None
    lost: tuple[str, ...]
    done: tuple[str, ...]
    lost_seqs: frozenset[int]

    @property
    def empty(self) -> bool:
        return self.confirmed_seq is None and not self.lost and not self.done


class DeliveryLedger:
    def __init__(
        self,
        emitter_id: str | None = None,
        *,
        observer: SpanExportObserver | None = None,
        give_up_s: float = 30.0,
        heartbeat_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], int] = now_ns,
    ) -> None:
        self.emitter_id = emitter_id or new_emitter_id()
        self.observer = observer
        #: A span neither confirmed nor failed after this long was dropped.
        self.give_up_s = give_up_s
        #: The watermark row is written at least this often (its seen_ns), even unchanged.
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._next_seq = 1
        self._roots: dict[int, _Root] = {}
        self._lost_roots: dict[int, str] = {}
        self._lost_jobs: set[str] = set()
        self._traces: dict[int, _Trace] = {}
        self._rebuilds: dict[int, _Rebuild] = {}
        self._done: set[str] = set()
        self._written_seq = 0
        self._written_at: float | None = None
        self._flushing = False
        #: The last export failed: the collector is down or refusing.
        self.failing = False

    def configure(self, *, give_up_s: float) -> None:
        self.give_up_s = give_up_s

    # -- the terminal transition (RootStamps) -----------------------------------------

    def begin(self, job_id: str) -> int:
        with self._lock:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            self._roots[seq] = _Root(job_id, self._clock())
            return seq

    def committed(self, seq: int, trace_id: str, root_span_id: str) -> None:
        with self._lock:
            root = self._roots.get(seq)
            if root is None:
                return
            root.trace_id, root.span_id = int(trace_id, 16), int(root_span_id, 16)
            entry = self._traces.setdefault(root.trace_id, _Trace(root.job_id))
            entry.root_seq = seq

    def void(self, seq: int) -> None:
        with self._lock:
            self._roots.pop(seq, None)

    def unknown(self, seq: int) -> None:
        with self._lock:
            root = self._roots.pop(seq, None)
            if root is not None:
                self._lost_roots[seq] = root.job_id

    # -- the span pipeline (SpanExportListener) -----------------------------------------

    def span_ended(self, span: ReadableSpan) -> None:
        found = _job_span(span)
        if found is None:
            return
        trace_id, span_id, job_id = found
        with self._lock:
            entry = self._traces.get(trace_id)
            if entry is None:
                entry = self._traces[trace_id] = _Trace(job_id)
            entry.outstanding[span_id] = self._clock()
            root = self._roots.get(entry.root_seq) if entry.root_seq is not None else None
            if root is not None and root.span_id == span_id:
                root.seen = True

    def spans_exported(self, spans: Sequence[ReadableSpan], ok: bool) -> None:
        self.failing = not ok
        with self._lock:
            touched = set()
            for span in spans:
                found = _job_span(span)
                if found is None:
                    continue
                trace_id, span_id, _ = found
                touched.add(trace_id)
                self._exported(trace_id, span_id, ok)
            for trace_id in touched:
                self._settle(trace_id)

    def _exported(self, trace_id: int, span_id: int, ok: bool) -> None:
        entry = self._traces.get(trace_id)
        if entry is not None:
            entry.outstanding.pop(span_id, None)
            if not ok:
                entry.failed = True
            elif entry.root_seq is not None:
                root = self._roots.get(entry.root_seq)
                if root is not None and root.span_id == span_id:
                    root.confirmed = True
        rebuild = self._rebuilds.get(trace_id)
        if rebuild is not None:
            if not ok:
                del self._rebuilds[trace_id]  # its claim expires; a reconciler tries again
            else:
                rebuild.pending.discard(span_id)
                if not rebuild.pending:
                    del self._rebuilds[trace_id]
                    self._done.add(rebuild.job_id)

    def _settle(self, trace_id: int) -> None:
        """Decide what a trace's exports so far mean (under the lock)."""
        entry = self._traces.get(trace_id)
        if entry is None:
            return
        if entry.failed:
            entry.failed = False
            seq = entry.root_seq
            root = self._roots.pop(seq, None) if seq is not None else None
            if seq is not None and root is not None:
                self._lost_roots[seq] = root.job_id
            else:
                self._lost_jobs.add(entry.job_id)
            entry.root_seq = None
        if entry.outstanding:
            return
        seq = entry.root_seq
        if seq is not None and (root := self._roots.get(seq)) is not None and root.confirmed:
            del self._roots[seq]
            entry.root_seq = None
        if entry.root_seq is None:
            del self._traces[trace_id]

    # -- the reconciler's re-exports ----------------------------------------------------

    def expect(self, job_id: str, trace_id: str, span_ids: Iterable[str]) -> None:
        """A rebuilt trace is about to be emitted: record ``job_id`` done once all of
        ``span_ids`` are confirmed."""
        with self._lock:
            pending = {int(s, 16) for s in span_ids}
            if pending:
                self._rebuilds[int(trace_id, 16)] = _Rebuild(job_id, pending, self._clock())
            else:
                self._done.add(job_id)

    # -- time ---------------------------------------------------------------------------

    def sweep(self) -> None:
        """Give up on what the pipeline held too long: a span never confirmed nor failed
        was dropped (its trace is lost); a root never emitted after its transition
        (a bug, a crash in between) is lost; a rebuild never confirmed is abandoned."""
        now = self._clock()
        with self._lock:
            for trace_id, entry in list(self._traces.items()):
                stale = [s for s, since in entry.outstanding.items() if now - since > self.give_up_s]
                for span_id in stale:
                    del entry.outstanding[span_id]
                if stale:
                    entry.failed = True
                    self._settle(trace_id)
            for seq, root in list(self._roots.items()):
                if not root.seen and now - root.since > self.give_up_s:
                    del self._roots[seq]
                    self._lost_roots[seq] = root.job_id
                    if root.trace_id is not None and root.trace_id in self._traces:
                        self._traces[root.trace_id].root_seq = None
            for trace_id, rebuild in list(self._rebuilds.items()):
                if now - rebuild.since > self.give_up_s:
                    del self._rebuilds[trace_id]

    # -- the store --------------------------------------------------------------------

    def writes(self, *, heartbeat: bool = False) -> Writes:
        """What the next flush must write."""
        with self._lock:
            # Lost roots are flagged in the same transaction: the watermark may pass them.
            watermark = min(self._roots) - 1 if self._roots else self._next_seq - 1
            moved = watermark > self._written_seq or (heartbeat and self._next_seq > 1)
            return Writes(
                confirmed_seq=watermark if moved else None,
                lost=tuple(sorted({*self._lost_roots.values(), *self._lost_jobs})),
                done=tuple(sorted(self._done)),
                lost_seqs=frozenset(self._lost_roots),
            )

    def written(self, writes: Writes) -> None:
        with self._lock:
            for seq in writes.lost_seqs:
                self._lost_roots.pop(seq, None)
            self._lost_jobs.difference_update(writes.lost)
            self._done.difference_update(writes.done)
            if writes.confirmed_seq is not None:
                self._written_seq = max(self._written_seq, writes.confirmed_seq)
                self._written_at = self._clock()

    def unsettled(self) -> bool:
        """Something is still to confirm or to write."""
        with self._lock:
            return bool(
                self._roots
                or self._lost_roots
                or self._lost_jobs
                or self._done
                or self._rebuilds
                or self._next_seq - 1 > self._written_seq
            )

    async def flush(self, store: JobStore) -> bool:
        """Write what changed (one transaction, only when something did); True if it wrote.
        Store errors propagate (nothing is forgotten: the next flush writes it)."""
        if self._flushing:
            return False  # another task of this process is writing
        self._flushing = True
        try:
            self.sweep()
            due = self._written_at is None or self._clock() - self._written_at >= self.heartbeat_s
            writes = self.writes(heartbeat=due)
            if writes.empty:
                return False
            await store.trace_confirm(
                emitter=self.emitter_id,
                confirmed_seq=writes.confirmed_seq,
                lost=writes.lost,
                done=writes.done,
                now_ns=self._wall(),
            )
            self.written(writes)
            return True
        finally:
            self._flushing = False


_LEDGERS: weakref.WeakKeyDictionary[SpanExportObserver, DeliveryLedger] = weakref.WeakKeyDictionary()
_LEDGERS_LOCK = threading.Lock()


def ledger_for(tracer_provider: object | None) -> DeliveryLedger | None:
    """The ledger of a tracer provider whose span pipeline is observed (built by
    :func:`otel.setup.observed_span_pipeline`, as :func:`otel.setup.setup_telemetry`
    does); None otherwise (no telemetry, or spans nobody confirms). One per pipeline."""
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    observer = span_export_observer(provider)
    if observer is None:
        return None
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(observer)
        if ledger is None:
            ledger = DeliveryLedger(observer=observer)
            observer.add_listener(ledger)
            _LEDGERS[observer] = ledger
        return ledger
