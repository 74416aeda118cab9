"""Durable traces: deterministic span ids, the trace rebuilt from the store equal to the
live one, the export-confirmation ledger (never past a lost root), the reconciler on
both stores (claims, grace, concurrency, metric and log), the embedded default's files,
no statement per job when nothing goes wrong, and ``orchestrator trace`` drawing a job
from the store.

Time is injected (the ledger's monotonic clock, the reconciler's wall clock) and span
export is driven by the test (a batch processor with an hour's delay, flushed on
demand), so nothing here waits for a timer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode
from telemetry_helpers import (
    FakeModule,
    TelemetryHarness,
    build_harness,
    captured_otlp_logs,
    fail,
    log_records,
    ok,
    panic,
    run_job,
    run_orchestrator,
)

from orchestrator.bootstrap import App, open_app
from orchestrator.cli.spans import load_spans
from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext, now_ns
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.stores import JobStore
from orchestrator.stores.postgres import PostgresJobStore
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.tracing import SpanRecord, spans_from_store
from orchestrator.tracing.emit import emit_spans
from orchestrator.tracing.ledger import DeliveryLedger, ledger_for
from orchestrator.tracing.reconciler import TraceConfig, TraceKeeper, export_window_seconds
from otel.files import SIGNAL_FILES, FileSpanExporter, JsonlWriter
from otel.ids import JobIdGenerator, SpanPlace, span_id_for
from otel.setup import SpanExportObserver, observed_span_pipeline
from otel.vocabulary import Attr, Metric, OperationEvent

pytestmark = pytest.mark.anyio

HOUR_MS = 3_600_000
GRACE_S = 60.0


# -- span ids ------------------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

#: Computed once from the scheme (blake2b-64 keyed "orchestrator.span-id.v1" over the trace
#: id, the place, the attempt and the module): pinned, so a change of scheme is noticed
#: (ids of spans already exported would no longer match the ones rebuilt).
PINNED_IDS = [
    (SpanPlace.CREATE, 0, "", "3113b6ca4c82f4e4"),
    (SpanPlace.QUEUED, 1, "", "f510d1992783dd36"),
    (SpanPlace.EXECUTE, 1, "", "1729bd53a5f7a7d3"),
    (SpanPlace.EXECUTE, 2, "", "6980d088966e95ee"),
    (SpanPlace.MODULE, 1, "secrets", "6692dc492b615d81"),
    (SpanPlace.FINALIZE, 2, "", "d19f76b128c697fd"),
]


@pytest.mark.parametrize(("place", "attempt", "module", "expected"), PINNED_IDS)
def test_span_ids_are_a_keyed_hash_of_the_place_in_the_job(
    place: SpanPlace, attempt: int, module: str, expected: str
) -> None:
    assert format(span_id_for(TRACE, place, attempt, module), "016x") == expected
    assert span_id_for(int(TRACE, 16), place, attempt, module) == int(expected, 16)
    message = bytes.fromhex(TRACE) + place.value.encode() + b"\0" + attempt.to_bytes(8, "big") + module.encode()
    digest = hashlib.blake2b(message, digest_size=8, key=b"orchestrator.span-id.v1").digest()
    assert digest.hex() == expected


def test_span_ids_differ_by_trace_place_attempt_and_module() -> None:
    ids = {
        span_id_for(trace_id, place, attempt, module)
        for trace_id in (TRACE, "0" * 31 + "1")
        for place in SpanPlace
        for attempt in (0, 1, 2)
        for module in ("", "a", "ab", "b")
    }
    assert len(ids) == 2 * len(SpanPlace) * 3 * 4
    assert 0 not in ids


# -- helpers -------------------------------------------------------------------------------


class GateExporter(SpanExporter):
    """Keeps what it exports in memory; fails every batch while ``failing``."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.failing = False
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.failing:
            self.failed_batches += 1
            return SpanExportResult.FAILURE
        return self.memory.export(spans)

    def shutdown(self) -> None:
        self.memory.shutdown()

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())


@dataclass
class Observed:
    """A JobTelemetry whose span pipeline is observed (as setup_telemetry builds it),
    exporting only when the test flushes it."""

    telemetry: JobTelemetry
    provider: TracerProvider
    exporter: GateExporter
    observer: SpanExportObserver
    metrics: InMemoryMetricReader
    meter_provider: MeterProvider = field(repr=False)

    @property
    def ledger(self) -> DeliveryLedger:
        found = ledger_for(self.provider)
        assert found is not None
        return found

    def flush(self) -> None:
        assert self.observer.force_flush(10_000)

    def spans(self) -> list[ReadableSpan]:
        return self.exporter.spans()

    def counter(self, spec: Any) -> dict[str, float]:
        data = self.metrics.get_metrics_data()
        totals: dict[str, float] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == spec.name:
                        for point in metric.data.data_points:
                            key = str((point.attributes or {}).get(Attr.REASON))
                            totals[key] = totals.get(key, 0) + point.value
        return totals

    def shutdown(self) -> None:
        self.provider.shutdown()
        self.meter_provider.shutdown()


def observed(exporter: SpanExporter | None = None) -> Observed:
    provider = TracerProvider(id_generator=JobIdGenerator())
    gate = exporter if isinstance(exporter, GateExporter) else GateExporter()
    observer = observed_span_pipeline(provider, exporter or gate, schedule_delay_millis=HOUR_MS)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    return Observed(JobTelemetry(provider, meters), provider, gate, observer, reader, meters)


@pytest.fixture
def pipeline() -> Iterator[Observed]:
    built = observed()
    try:
        yield built
    finally:
        built.shutdown()


def request(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    source = tmp_path / "project"
    source.mkdir(exist_ok=True)
    (source / "main.py").write_text("print('hi')\n", encoding="utf-8")
    return {"project_id": "proj-d", "source": str(source), **extra}


MODULES = [FakeModule("alpha", ok()), FakeModule("beta", fail("bad input")), FakeModule("gamma", panic())]


@contextlib.asynccontextmanager
async def app_on(tmp_path: Path, telemetry: JobTelemetry, store: JobStore | None = None) -> AsyncIterator[App]:
    settings = Settings(data_dir=tmp_path / "data", trace_grace_seconds=GRACE_S)
    async with open_app(settings, telemetry=telemetry, registry=ModuleRegistry(MODULES), store=store) as app:
        yield app


def hex_ids(span: ReadableSpan) -> tuple[str, str, str]:
    assert span.context is not None
    parent = format(span.parent.span_id, "016x") if span.parent is not None else ""
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"), parent


async def recovered_job(app: App, tmp_path: Path, modules: list[str]) -> Job:
    """A job whose first attempt's worker died (its lease expired), recovered and run
    to completion by another worker."""
    created = await app.create.execute(request(tmp_path, modules=modules))
    lost = await app.workflow.claim("dead-worker", lease_seconds=30)
    assert lost is not None
    expired = await app.store.get(created.id)
    requeued = await app.workflow.recover(expired, max_attempts=3, worker_id="reaper")
    assert requeued.status is JobStatus.QUEUED
    claimed = await app.workflow.claim("live-worker", lease_seconds=30)
    assert claimed is not None
    await app.execute.execute(claimed, worker_id="live-worker")
    return await app.store.get(created.id)


# -- live ids ------------------------------------------------------------------------------

#: Span name -> the place its id is derived from (and whether the attempt counts).
PLACE_OF = {
    "job.create": SpanPlace.CREATE,
    "job.queued": SpanPlace.QUEUED,
    "job.execute": SpanPlace.EXECUTE,
    "job.module": SpanPlace.MODULE,
    "job.finalize": SpanPlace.FINALIZE,
}


async def test_every_live_job_span_has_the_id_of_its_place(tmp_path: Path, harness: TelemetryHarness) -> None:
    async with app_on(tmp_path, harness.telemetry) as app:
        job = await recovered_job(app, tmp_path, ["alpha", "beta"])
    spans = harness.trace(job.trace.trace_id)
    assert sorted(s.name for s in spans) == sorted(
        [
            *("job", "job.create", "job.queued", "job.queued", "job.execute", "job.execute"),
            *("job.module", "job.module", "job.finalize"),
        ]
    )
    for span in spans:
        trace_id, span_id, _ = hex_ids(span)
        attrs = span.attributes or {}
        if span.name == "job":
            assert span_id == job.trace.span_id
            continue
        place = PLACE_OF[span.name]
        attempt = 0 if place is SpanPlace.CREATE else int(attrs.get(Attr.ATTEMPT, job.attempt))  # type: ignore[arg-type]
        module = str(attrs.get(Attr.MODULE, "")) if place is SpanPlace.MODULE else ""
        assert span_id == format(span_id_for(trace_id, place, attempt, module), "016x"), span.name


# -- the rebuilt trace is the live trace -----------------------------------------------------


def assert_rebuilt_matches(live: list[ReadableSpan], rebuilt: list[SpanRecord], job: Job) -> None:
    live_ids = {hex_ids(s)[1]: s for s in live}
    rebuilt_ids = {r.span_id: r for r in rebuilt}
    assert set(rebuilt_ids) == set(live_ids), "the same spans, by id"
    for span_id, record in rebuilt_ids.items():
        span = live_ids[span_id]
        _, _, parent = hex_ids(span)
        assert (record.name, record.parent_id) == (span.name, parent), span.name
        assert record.attributes[Attr.RECONSTRUCTED] is True
        assert record.status_code == span.status.status_code.value, span.name
        assert [e.name for e in record.events] == [e.name for e in span.events], span.name
        for key in (Attr.JOB_ID, Attr.PROJECT_ID, Attr.ATTEMPT, Attr.MODULE, Attr.ERROR_TYPE, Attr.OUTCOME):
            assert record.attributes.get(key) == (span.attributes or {}).get(key), (span.name, key)
        assert record.start_ns <= record.end_ns
    root = rebuilt_ids[job.trace.span_id]
    live_root = live_ids[job.trace.span_id]
    assert (root.start_ns, root.end_ns) == (live_root.start_time, live_root.end_time)
    assert {k: v for k, v in root.attributes.items() if k != Attr.RECONSTRUCTED} == dict(live_root.attributes or {})
    assert [(e.name, e.time_ns, dict(e.attributes)) for e in root.events] == [
        (e.name, e.timestamp, dict(e.attributes or {})) for e in live_root.events
    ]
    assert root.status_message == (live_root.status.description or "")


@pytest.mark.parametrize("modules", [["alpha"], ["alpha", "beta", "gamma"]], ids=["completed", "failed"])
async def test_a_trace_rebuilt_from_the_store_is_the_live_trace(
    tmp_path: Path, harness: TelemetryHarness, modules: list[str]
) -> None:
    async with app_on(tmp_path, harness.telemetry) as app:
        job = await run_job(app, request(tmp_path, modules=modules))
        history = await app.store.history(job.id)
    assert job.status is (JobStatus.COMPLETED if len(modules) == 1 else JobStatus.FAILED)
    rebuilt = spans_from_store(job, history)
    assert_rebuilt_matches(harness.trace(job.trace.trace_id), rebuilt, job)
    # Module times are the stored ones.
    for result in job.results:
        [record] = [r for r in rebuilt if r.attributes.get(Attr.MODULE) == result.module]
        assert record.start_ns == result.started_ns
        assert record.end_ns == result.started_ns + round(result.duration_ms * 1e6)
    # The lifecycle events carry each stored duration to the nanosecond (the report reads
    # them back: a coarser rounding made its answer from the files differ from the store's).
    [root] = [r for r in rebuilt if r.span_id == job.trace.span_id]
    assert [e.attributes[Attr.DURATION_MS] for e in root.events] == [round(e.duration_ms, 6) for e in history]
    assert any(round(e.duration_ms, 3) != e.duration_ms for e in history)  # the check means something


async def test_a_rebuilt_trace_keeps_the_lost_attempt_and_each_queue_wait(
    tmp_path: Path, harness: TelemetryHarness
) -> None:
    async with app_on(tmp_path, harness.telemetry) as app:
        job = await recovered_job(app, tmp_path, ["alpha"])
        history = await app.store.history(job.id)
    rebuilt = spans_from_store(job, history)
    assert_rebuilt_matches(harness.trace(job.trace.trace_id), rebuilt, job)
    executes = {r.attributes[Attr.ATTEMPT]: r for r in rebuilt if r.name == "job.execute"}
    assert set(executes) == {1, 2}
    lost = executes[1]
    assert lost.attributes[Attr.ERROR_TYPE] == "worker_lost"
    assert lost.attributes[Attr.WORKER_ID] == "dead-worker"
    assert lost.status_code == StatusCode.ERROR.value
    recover = next(e for e in history if e.reason == "lease_expired")
    assert lost.end_ns == recover.at_ns
    queued = sorted((r.start_ns, r.end_ns) for r in rebuilt if r.name == "job.queued")
    claims = [e.at_ns for e in history if str(e.status_to) == "running"]
    assert [end for _, end in queued] == claims


async def test_a_job_cancelled_in_the_queue_rebuilds_to_create_and_root(
    tmp_path: Path, harness: TelemetryHarness
) -> None:
    async with app_on(tmp_path, harness.telemetry) as app:
        created = await app.create.execute(request(tmp_path, modules=["alpha"]))
        job = await app.workflow.cancel(created.id, reason="not needed")
        history = await app.store.history(job.id)
    rebuilt = spans_from_store(job, history)
    assert [r.name for r in rebuilt] == ["job", "job.create"]
    assert_rebuilt_matches(harness.trace(job.trace.trace_id), rebuilt, job)


def test_a_job_with_no_history_rebuilds_to_nothing() -> None:
    job = Job.new(project_id="p", source="/x", modules=("a",), options=JobOptions(), trace=TraceContext.new())
    assert spans_from_store(job, []) == []


# -- the ledger ------------------------------------------------------------------------------


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job_spans(trace_id: str, root: str, job_id: str) -> dict[str, ReadableSpan]:
    """A finished root span and a module span of one job, as the SDK makes them."""
    provider = TracerProvider(id_generator=JobIdGenerator())
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    module = span_id_for(trace_id, SpanPlace.MODULE, 1, "alpha")
    records = [
        SpanRecord(trace_id, format(module, "016x"), root, "job.module", 1, 2, {Attr.JOB_ID: job_id}),
        SpanRecord(trace_id, root, "", "job", 0, 3, {Attr.JOB_ID: job_id}),
    ]
    emit_spans(provider.get_tracer("test"), records)
    found = {s.name: s for s in memory.get_finished_spans()}
    provider.shutdown()
    return found


ROOTS = [(format(n, "032x"), format(n, "016x"), f"job-{n}") for n in (0xA1, 0xB2, 0xC3)]


def started(ledger: DeliveryLedger, n: int) -> tuple[int, dict[str, ReadableSpan]]:
    """Job ``n`` of ROOTS ended here: its transition stored, its spans emitted (queued)."""
    trace_id, root, job_id = ROOTS[n]
    seq = ledger.begin(job_id)
    ledger.committed(seq, trace_id, root)
    spans = job_spans(trace_id, root, job_id)
    ledger.span_ended(spans["job.module"])
    ledger.span_ended(spans["job"])
    return seq, spans


def test_the_watermark_moves_once_a_root_and_its_trace_are_confirmed() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    seq, spans = started(ledger, 0)
    assert seq == 1
    assert ledger.writes().confirmed_seq is None, "nothing confirmed yet"
    ledger.spans_exported([spans["job"]], ok=True)
    assert ledger.writes().confirmed_seq is None, "the root is confirmed, its module span is not"
    ledger.spans_exported([spans["job.module"]], ok=True)
    writes = ledger.writes()
    assert (writes.confirmed_seq, writes.lost, writes.done) == (1, (), ())


def test_a_root_emitted_but_never_confirmed_holds_the_watermark_below_it() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    _, first = started(ledger, 0)
    started(ledger, 1)  # killed before this one's export: never confirmed
    _, third = started(ledger, 2)
    ledger.spans_exported([*first.values(), *third.values()], ok=True)
    writes = ledger.writes()
    assert writes.confirmed_seq == 1, "confirmed up to the first; the second holds it (the third waits behind)"
    assert writes.lost == ()


def test_a_failed_export_flags_the_job_in_the_write_that_passes_it() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    _, first = started(ledger, 0)
    _, second = started(ledger, 1)
    ledger.spans_exported(list(first.values()), ok=False)  # the collector refused the batch
    ledger.spans_exported(list(second.values()), ok=True)
    writes = ledger.writes()
    assert writes.confirmed_seq == 2
    assert writes.lost == ("job-161",)
    assert writes.lost_seqs == {1}
    ledger.written(writes)
    assert ledger.writes().lost == (), "flagged once"


def test_a_span_dropped_from_a_full_queue_is_given_up_on() -> None:
    clock = Clock()
    ledger = DeliveryLedger("e", give_up_s=10.0, clock=clock)
    _, spans = started(ledger, 0)
    ledger.spans_exported([spans["job"]], ok=True)  # the module span never reaches the exporter
    clock.now += 9.0
    ledger.sweep()
    assert ledger.writes().confirmed_seq is None
    clock.now += 2.0
    ledger.sweep()
    writes = ledger.writes()
    assert (writes.confirmed_seq, writes.lost) == (1, ("job-161",))


def test_a_root_never_emitted_is_given_up_on() -> None:
    clock = Clock()
    ledger = DeliveryLedger("e", give_up_s=10.0, clock=clock)
    seq = ledger.begin("job-x")
    ledger.committed(seq, ROOTS[0][0], ROOTS[0][1])  # stored, but the process failed to emit
    clock.now += 11.0
    ledger.sweep()
    assert (ledger.writes().confirmed_seq, ledger.writes().lost) == (1, ("job-x",))


def test_a_refused_write_passes_unflagged_and_an_unknown_one_is_flagged() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    refused, unknown = ledger.begin("job-refused"), ledger.begin("job-unknown")
    ledger.void(refused)
    ledger.unknown(unknown)
    writes = ledger.writes()
    assert (writes.confirmed_seq, writes.lost) == (2, ("job-unknown",))


def test_a_lost_span_of_a_job_ended_elsewhere_flags_that_job() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    spans = job_spans(*ROOTS[0][:2], "job-elsewhere")
    ledger.span_ended(spans["job.module"])  # no transition of this job here
    ledger.spans_exported([spans["job.module"]], ok=False)
    writes = ledger.writes()
    assert (writes.confirmed_seq, writes.lost) == (None, ("job-elsewhere",))


def test_a_rebuilt_trace_is_done_only_when_every_span_is_confirmed() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    trace_id, root, job_id = ROOTS[0]
    spans = job_spans(trace_id, root, job_id)
    ids = [hex_ids(s)[1] for s in spans.values()]
    ledger.expect(job_id, trace_id, ids)
    ledger.spans_exported([spans["job"]], ok=True)
    assert ledger.writes().done == ()
    ledger.spans_exported([spans["job.module"]], ok=True)
    assert ledger.writes().done == (job_id,)


def test_a_trace_with_nothing_to_rebuild_is_done_at_once() -> None:
    ledger = DeliveryLedger("e", clock=Clock())
    ledger.expect("job-pruned-history", ROOTS[0][0], [])
    assert ledger.writes().done == ("job-pruned-history",)


@pytest.mark.parametrize(
    ("env", "window", "give_up"),
    [
        ({}, 15.0, 30.0),  # the SDK's defaults: 5 s batch delay, 10 s export timeout
        ({"OTEL_BSP_SCHEDULE_DELAY": "300", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}, 2.3, 30.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "2", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "40"}, 45.0, 46.0),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, 15.0, 30.0),
    ],
)
def test_a_span_is_given_up_on_only_after_a_healthy_export_could_answer(
    env: dict[str, str], window: float, give_up: float
) -> None:
    assert export_window_seconds(env) == pytest.approx(window)
    config = TraceConfig(grace_seconds=GRACE_S, export_seconds=export_window_seconds(env))
    assert config.give_up_seconds == pytest.approx(give_up)
    assert config.claim_seconds >= config.give_up_seconds + config.flush_seconds
    short = TraceConfig(grace_seconds=2.0, export_seconds=export_window_seconds({}))
    assert short.give_up_seconds == 16.0, "a short grace never gives up on a span still in the 5 s batch delay"


# -- the store and the reconciler ------------------------------------------------------------


def second_store(store: JobStore) -> JobStore:
    """Another store object on the same database (another process's view)."""
    if isinstance(store, SQLiteJobStore):
        return SQLiteJobStore(store.path)
    assert isinstance(store, PostgresJobStore)
    return PostgresJobStore(store.pg._url, schema=store.schema)


class WallClock:
    """Wall-clock nanoseconds, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_ns() + self.offset

    def skip(self, seconds: float) -> None:
        self.offset += int(seconds * 1e9)


def keeper(store: JobStore, pipe: Observed, clock: WallClock, owner: str = "reconciler") -> TraceKeeper:
    return TraceKeeper(store, pipe.telemetry, pipe.ledger, TraceConfig(grace_seconds=GRACE_S), owner=owner, clock=clock)


async def confirm(keeper_: TraceKeeper, pipe: Observed) -> None:
    """The reconciler's process exports what it emitted and writes its confirmations."""
    await anyio.to_thread.run_sync(pipe.flush)
    await keeper_.flush()


def root_ids(spans: Sequence[ReadableSpan]) -> list[str]:
    return sorted(hex_ids(s)[1] for s in spans if s.name == "job")


async def dead_jobs(app: App, store: JobStore, tmp_path: Path, count: int) -> list[Job]:
    """Jobs ended by a process that emitted their roots and died before confirming any."""
    store.root_stamps = DeliveryLedger("dead-emitter")
    jobs = [await run_job(app, request(tmp_path, modules=["alpha"])) for _ in range(count)]
    store.root_stamps = None
    return jobs


async def test_the_terminal_transition_names_its_emitter_and_a_reconciler_rebuilds_what_it_never_confirmed(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness, pipeline: Observed
) -> None:
    clock = WallClock()
    async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
        jobs = await dead_jobs(app, app.store, tmp_path, 3)
        histories = await app.store.history_many([j.id for j in jobs])
    rebuilding = keeper(store, pipeline, clock)
    with captured_otlp_logs(logging.INFO) as logs_out:
        assert await rebuilding.reconcile() == 0, "within the grace period"
        clock.skip(GRACE_S + 1)
        assert await rebuilding.reconcile() == 3
    await confirm(rebuilding, pipeline)
    clock.skip(GRACE_S * 3)  # past every claim: done jobs stay done
    assert await rebuilding.reconcile() == 0

    exported = pipeline.spans()
    for job in jobs:
        expected = {r.span_id for r in spans_from_store(job, histories[job.id])}
        got = {hex_ids(s)[1] for s in exported if hex_ids(s)[0] == job.trace.trace_id}
        assert got == expected
        assert len(expected) == 6  # root, create, queued, execute, module, finalize
    assert all((s.attributes or {}).get(Attr.RECONSTRUCTED) is True for s in exported)
    roots = [s for s in exported if s.name == "job"]
    for root in roots:
        job = next(j for j in jobs if j.trace.span_id == hex_ids(root)[1])
        assert [(e.name, e.timestamp) for e in root.events] == [(str(h.event), h.at_ns) for h in histories[job.id]], (
            "the lifecycle events are the stored history, at their timestamps"
        )
    assert pipeline.counter(Metric.TRACES_RECONSTRUCTED) == {"unconfirmed": 3}
    records = log_records(logs_out, OperationEvent.TRACE_RECONSTRUCTED)
    assert sorted(str((r.log_record.attributes or {})[Attr.JOB_ID]) for r in records) == sorted(j.id for j in jobs)
    for r in records:
        job = next(j for j in jobs if j.id == (r.log_record.attributes or {})[Attr.JOB_ID])
        assert format(r.log_record.trace_id or 0, "032x") == job.trace.trace_id


async def test_a_confirmed_root_is_never_rebuilt_and_an_unconfirmed_one_is(
    store: JobStore, tmp_path: Path, pipeline: Observed
) -> None:
    live = observed()
    clock = WallClock()
    try:
        async with app_on(tmp_path, live.telemetry, store=second_store(store)) as app:
            assert app.deliveries is live.ledger
            confirmed = await run_job(app, request(tmp_path, modules=["alpha"]))
            await anyio.to_thread.run_sync(live.flush)
            assert await live.ledger.flush(app.store)
            unconfirmed = await run_job(app, request(tmp_path, modules=["alpha"]))
            await live.ledger.flush(app.store)  # written again: still below the second root
            # SIGKILL here: the app never settles (its exporter never sends the second root).
            app.deliveries = None
            live.ledger.observer = None
            live.exporter.failing = True
            due = await app.store.trace_claim(
                owner="probe", now_ns=clock(), before_ns=clock() - int(GRACE_S * 1e9), expires_ns=clock(), limit=10
            )
            assert due == [], "nothing is due before the grace period"
    finally:
        live.shutdown()
    clock.skip(GRACE_S + 1)
    rebuilding = keeper(store, pipeline, clock)
    assert await rebuilding.reconcile() == 1
    assert root_ids(pipeline.spans()) == []  # emitted, not yet exported
    await confirm(rebuilding, pipeline)
    assert root_ids(pipeline.spans()) == [unconfirmed.trace.span_id]
    assert confirmed.trace.span_id not in root_ids(pipeline.spans())


async def test_a_failed_export_is_rebuilt_even_while_its_emitter_lives(
    store: JobStore, tmp_path: Path, pipeline: Observed
) -> None:
    live = observed()
    clock = WallClock()
    try:
        async with app_on(tmp_path, live.telemetry, store=second_store(store)) as app:
            live.exporter.failing = True
            job = await run_job(app, request(tmp_path, modules=["alpha", "beta"]))
            await anyio.to_thread.run_sync(live.observer.force_flush, 10_000)
            assert live.exporter.failed_batches >= 1
            assert await live.ledger.flush(app.store)
            assert live.ledger.writes().confirmed_seq is None, "the watermark passed it, with the job flagged"
    finally:
        live.shutdown()
    clock.skip(GRACE_S + 1)
    rebuilding = keeper(store, pipeline, clock)
    assert await rebuilding.reconcile() == 1
    assert pipeline.counter(Metric.TRACES_RECONSTRUCTED) == {"export_failed": 1}
    await confirm(rebuilding, pipeline)
    assert root_ids(pipeline.spans()) == [job.trace.span_id]


async def test_while_spans_cannot_be_exported_a_pass_rebuilds_one_trace_to_probe(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness
) -> None:
    """A collector down for long: every rebuilt trace was lost again, claimed anew when
    its claim expired, rebuilt and logged again (a warning per job per pass, thousands
    an hour, and the worker's time), for as long as the outage lasted."""
    clock = WallClock()
    async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
        jobs = await dead_jobs(app, app.store, tmp_path, 8)
    pipe = observed()
    try:
        clock.skip(GRACE_S + 1)
        rebuilding = keeper(store, pipe, clock)
        pipe.exporter.failing = True
        assert await rebuilding.reconcile() == 8  # no export has failed yet: a full pass
        await confirm(rebuilding, pipe)
        assert pipe.ledger.failing
        for _ in range(3):  # the outage lasts: each pass, once the claims expired, rebuilds one
            clock.skip(rebuilding.config.claim_seconds + 1)
            assert await rebuilding.reconcile() == 1
            await confirm(rebuilding, pipe)
        assert pipe.spans() == []
        pipe.exporter.failing = False  # the collector is back: the next probe goes through
        clock.skip(rebuilding.config.claim_seconds + 1)
        assert await rebuilding.reconcile() == 1
        await confirm(rebuilding, pipe)
        assert not pipe.ledger.failing
        clock.skip(rebuilding.config.claim_seconds + 1)
        assert await rebuilding.reconcile() == 7  # the rest in one pass
        await confirm(rebuilding, pipe)
        assert root_ids(pipe.spans()) == sorted(j.trace.span_id for j in jobs)
        clock.skip(rebuilding.config.claim_seconds + 1)
        assert await rebuilding.reconcile() == 0
    finally:
        pipe.shutdown()


async def test_an_emitter_whose_watermark_moves_is_waited_for(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness, pipeline: Observed
) -> None:
    clock = WallClock()
    emitter = DeliveryLedger("slow-emitter", wall=clock)
    async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
        app.store.root_stamps = emitter
        first = await run_job(app, request(tmp_path, modules=["alpha"]))
        second = await run_job(app, request(tmp_path, modules=["alpha"]))
        app.store.root_stamps = None
        # Its exporter is slow: the first job's spans are confirmed well after both ended.
        spans = harness.trace(first.trace.trace_id)
        for span in spans:
            emitter.span_ended(span)
        emitter.spans_exported(spans, ok=True)
        clock.skip(GRACE_S * 0.75)
        assert await emitter.flush(app.store)
    rebuilding = keeper(store, pipeline, clock)
    clock.skip(GRACE_S * 0.75)  # the second ended 1.5 grace periods ago, the watermark moved 0.75 ago
    assert await rebuilding.reconcile() == 0
    clock.skip(GRACE_S * 0.5)  # now the watermark has not moved for a grace period
    assert await rebuilding.reconcile() == 1
    await confirm(rebuilding, pipeline)
    assert root_ids(pipeline.spans()) == [second.trace.span_id]


async def test_concurrent_reconcilers_rebuild_each_job_once(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness
) -> None:
    clock = WallClock()
    async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
        jobs = await dead_jobs(app, app.store, tmp_path, 12)
    other = second_store(store)
    await other.open()
    pipes = [observed(), observed()]
    try:
        clock.skip(GRACE_S + 1)
        keepers = [
            keeper(s, p, clock, owner=f"r{i}") for i, (s, p) in enumerate(zip([store, other], pipes, strict=True))
        ]
        for k in keepers:
            k.config = TraceConfig(grace_seconds=GRACE_S, batch=5)
        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for k in keepers:
                    tg.start_soon(k.reconcile)
        for pipe in pipes:
            await anyio.to_thread.run_sync(pipe.flush)
        rebuilt = [root_ids(p.spans()) for p in pipes]
        assert not set(rebuilt[0]) & set(rebuilt[1]), "no job rebuilt by both"
        assert sorted(rebuilt[0] + rebuilt[1]) == sorted(j.trace.span_id for j in jobs)
        # The first reconciler's confirmations are never written (it died): its claims
        # expire and the other takes its jobs over.
        await keepers[1].flush()
        clock.skip(keepers[0].config.claim_seconds + 1)
        taken_over = [await keepers[1].reconcile() for _ in range(3)]
        assert sum(taken_over) == len(rebuilt[0])
        assert await keepers[0].reconcile() == 0
    finally:
        await other.close()
        for pipe in pipes:
            pipe.shutdown()


async def test_a_sampled_job_ended_by_a_process_without_telemetry_is_rebuilt(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness, pipeline: Observed
) -> None:
    clock = WallClock()
    unsampled = build_harness(sampler=ALWAYS_OFF)
    try:
        async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
            job = await run_job(app, request(tmp_path, modules=["alpha"]))
        async with app_on(tmp_path, unsampled.telemetry, store=second_store(store)) as app:
            not_traced = await run_job(app, request(tmp_path, modules=["alpha"]))
    finally:
        unsampled.shutdown()
    assert not not_traced.trace.sampled
    clock.skip(GRACE_S + 1)
    rebuilding = keeper(store, pipeline, clock)
    assert await rebuilding.reconcile() == 1
    assert pipeline.counter(Metric.TRACES_RECONSTRUCTED) == {"not_emitted": 1}
    await confirm(rebuilding, pipeline)
    assert root_ids(pipeline.spans()) == [job.trace.span_id]


# -- the cost when nothing goes wrong ---------------------------------------------------------


class CountingConnector:
    """The store's connector, counting the statements (and batches) it is asked to run."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def fetchone(self, name: str, params: Any = None) -> Any:
        self.calls.append(name)
        return await self._inner.fetchone(name, params)

    async def fetchall(self, name: str, params: Any = None, **options: Any) -> Any:
        self.calls.append(name)
        return await self._inner.fetchall(name, params, **options)

    async def batch(self, calls: Sequence[tuple[str, Any]]) -> Any:
        self.calls.append("+".join(name for name, _ in calls))
        return await self._inner.batch(calls)


async def run_counted(app: App, tmp_path: Path, jobs: int) -> list[str]:
    store = app.store
    assert isinstance(store, SQLiteJobStore | PostgresJobStore)
    counting = CountingConnector(store.connector)
    store.connector = counting  # type: ignore[assignment]
    try:
        for _ in range(jobs):
            await run_job(app, request(tmp_path, modules=["alpha"]))
    finally:
        store.connector = counting._inner
    return counting.calls


async def test_confirming_exports_costs_no_statement_per_job(
    store: JobStore, tmp_path: Path, harness: TelemetryHarness, pipeline: Observed
) -> None:
    async with app_on(tmp_path, harness.telemetry, store=second_store(store)) as app:
        untracked = await run_counted(app, tmp_path, 5)
    async with app_on(tmp_path, pipeline.telemetry, store=second_store(store)) as app:
        assert app.deliveries is pipeline.ledger
        tracked = await run_counted(app, tmp_path, 5)
        assert tracked == untracked, "the same statements, the emitter riding in the terminal UPDATE"
        await anyio.to_thread.run_sync(pipeline.flush)
        counting = CountingConnector(app.store.connector)  # type: ignore[attr-defined]
        app.store.connector = counting  # type: ignore[attr-defined]
        assert await pipeline.ledger.flush(app.store)
        assert not await pipeline.ledger.flush(app.store), "nothing new: nothing written"
        app.store.connector = counting._inner  # type: ignore[attr-defined]
    assert counting.calls == ["trace_watermark"], "five jobs confirmed in one statement"
    assert pipeline.ledger.writes().confirmed_seq is None


# -- the embedded default ---------------------------------------------------------------------


async def test_the_embedded_default_rebuilds_into_its_files(tmp_path: Path, harness: TelemetryHarness) -> None:
    folder = tmp_path / "data" / "telemetry"
    files = observed(FileSpanExporter(JsonlWriter(folder / SIGNAL_FILES["traces"])))
    clock = WallClock()
    try:
        async with app_on(tmp_path, harness.telemetry) as app:
            [job] = await dead_jobs(app, app.store, tmp_path, 1)
            history = await app.store.history(job.id)
            assert list(load_spans(folder)) == []
            clock.skip(GRACE_S + 1)
            rebuilding = TraceKeeper(
                app.store, files.telemetry, files.ledger, TraceConfig(grace_seconds=GRACE_S), owner="w", clock=clock
            )
            assert await rebuilding.reconcile() == 1
            await anyio.to_thread.run_sync(files.flush)
            await rebuilding.flush()
            clock.skip(GRACE_S * 3)
            assert await rebuilding.reconcile() == 0, "recorded done once written to the file"
    finally:
        files.shutdown()
    written = list(load_spans(folder))
    assert {s.span_id for s in written} == {r.span_id for r in spans_from_store(job, history)}
    assert all(s.attributes.get(Attr.RECONSTRUCTED) is True for s in written)
    [root] = [s for s in written if s.name == "job"]
    assert [e.name for e in root.events] == [str(h.event) for h in history]


# -- orchestrator trace ------------------------------------------------------------------------


@pytest.mark.slow
async def test_trace_draws_a_finished_job_from_the_store_when_its_spans_are_not_in_the_files(
    tmp_path: Path, harness: TelemetryHarness
) -> None:
    async with app_on(tmp_path, harness.telemetry) as app:
        job = await run_job(app, request(tmp_path, modules=["alpha", "beta"]))
        history = await app.store.history(job.id)
    env = {"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "OTEL_SDK_DISABLED": "true"}
    shown = await anyio.to_thread.run_sync(lambda: run_orchestrator("trace", job.id, cwd=tmp_path, env=env))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("the job finished (failed at ")
    assert lines[0].endswith("7 spans drawn from the store (marked reconstructed)")
    assert lines[1] == f"trace {job.trace.trace_id}  job {job.id}"
    as_json = await anyio.to_thread.run_sync(lambda: run_orchestrator("trace", job.id, "--json", cwd=tmp_path, env=env))
    spans = json.loads(as_json.stdout)
    assert {s["span_id"] for s in spans} == {r.span_id for r in spans_from_store(job, history)}
    assert all(s["attributes"][Attr.RECONSTRUCTED] is True for s in spans)
