"""The trace of a job, on in-memory exporters and the real SQLite store: the span tree,
the root span's ids, start and lifecycle events, module spans, error shapes
(module error, panic, timeout, cancellation, lost worker), caller links and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import StatusCode
from telemetry_helpers import (
    FakeModule,
    TelemetryHarness,
    build_harness,
    captured_otlp_logs,
    children_by_parent,
    event_names,
    events_named,
    fail,
    find_spans,
    hang,
    log_records,
    ok,
    one_span,
    panic,
    run_job,
    span_hex_ids,
)

from orchestrator.bootstrap import App, open_app
from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext, now_ns
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.usecases.execute import CancelKind, JobControl
from otel.vocabulary import Attr, LifecycleEvent, Metric, ModuleEvent, SpanName

pytestmark = pytest.mark.anyio

PHASES = [SpanName.CREATE, SpanName.QUEUED, SpanName.EXECUTE, SpanName.FINALIZE]


@contextlib.asynccontextmanager
async def app_with(tmp_path: Path, harness: TelemetryHarness, modules: Sequence[FakeModule]) -> AsyncIterator[App]:
    async with open_app(
        Settings(data_dir=tmp_path / "data"), telemetry=harness.telemetry, registry=ModuleRegistry(modules)
    ) as app:
        yield app


def request(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    source = tmp_path / "project"
    source.mkdir(exist_ok=True)
    (source / "main.py").write_text("print('hi')\n", encoding="utf-8")
    return {"project_id": "proj-7", "source": str(source), **extra}


def root_of(spans: list[ReadableSpan]) -> ReadableSpan:
    roots = children_by_parent(spans)[None]
    assert [s.name for s in roots] == [SpanName.JOB]
    return roots[0]


def module_span(spans: list[ReadableSpan], module: str) -> ReadableSpan:
    return one_span(spans, SpanName.MODULE, **{Attr.MODULE: module})


def exception_event_attrs(span: ReadableSpan) -> dict[str, Any]:
    found = events_named(span, "exception")
    assert len(found) == 1, event_names(span)
    return dict(found[0].attributes or {})


# -- a completed job ------------------------------------------------------------------------


async def test_completed_job_has_the_exact_span_tree(tmp_path: Path, harness: TelemetryHarness) -> None:
    modules = [FakeModule("alpha", ok()), FakeModule("beta", ok(0.01)), FakeModule("gamma", ok())]
    async with app_with(tmp_path, harness, modules) as app:
        job = await run_job(app, request(tmp_path))
        history = await app.store.history(job.id)
    assert job.status is JobStatus.COMPLETED

    spans = harness.spans()
    assert spans == harness.trace(job.trace.trace_id), "every span belongs to the job's trace"
    tree = children_by_parent(spans)
    root = root_of(spans)
    assert span_hex_ids(root) == (job.trace.trace_id, job.trace.span_id)
    assert root.parent is None
    assert root.start_time == job.created_ns
    assert root.end_time == job.finished_ns
    assert root.status.status_code is StatusCode.OK

    assert root.context is not None
    phases = tree[root.context.span_id]
    assert [s.name for s in phases] == PHASES
    for phase in phases:
        assert phase.attributes is not None
        assert phase.attributes[Attr.JOB_ID] == job.id
        assert phase.attributes[Attr.PROJECT_ID] == "proj-7"
        assert root.start_time is not None
        assert phase.start_time is not None
        assert phase.start_time >= root.start_time
        assert phase.end_time is not None
        assert root.end_time is not None
        assert phase.end_time <= root.end_time, f"{phase.name} ends after the root"
    # finalize ends at the terminal transition, where the root ends (as a rebuilt trace does)
    assert one_span(phases, SpanName.FINALIZE).end_time == root.end_time == history[-1].at_ns
    execute = one_span(phases, SpanName.EXECUTE)
    assert execute.context is not None
    module_spans = tree[execute.context.span_id]
    assert {s.name for s in module_spans} == {SpanName.MODULE}
    assert sorted(str((s.attributes or {})[Attr.MODULE]) for s in module_spans) == ["alpha", "beta", "gamma"]
    for s in module_spans:
        assert s.context is not None
        assert s.context.span_id not in tree, "module spans are leaves"
    assert len(spans) == 1 + len(PHASES) + len(modules)

    # the root's attributes
    attrs = dict(root.attributes or {})
    assert attrs[Attr.JOB_ID] == job.id
    assert attrs[Attr.PROJECT_ID] == "proj-7"
    assert attrs[Attr.MODULE_COUNT] == 3
    assert attrs[Attr.ATTEMPT] == 1
    assert attrs[Attr.STATUS] == "completed"
    assert Attr.ERROR_TYPE not in attrs
    assert Attr.ERROR_CATEGORY not in attrs

    # the root's events: the persisted lifecycle history, in order, at its timestamps
    assert event_names(root) == [
        LifecycleEvent.CREATE,
        LifecycleEvent.ENQUEUE,
        LifecycleEvent.START,
        LifecycleEvent.COMPLETE,
    ]
    assert [e.timestamp for e in root.events] == [h.at_ns for h in history]
    for event, entry in zip(root.events, history, strict=True):
        assert event.attributes is not None
        assert set(event.attributes) >= {
            Attr.JOB_ID,
            Attr.PROJECT_ID,
            Attr.STATUS_FROM,
            Attr.STATUS_TO,
            Attr.REASON,
            Attr.DURATION_MS,
        }
        assert event.attributes[Attr.JOB_ID] == job.id
        assert event.attributes[Attr.PROJECT_ID] == "proj-7"
        assert event.attributes[Attr.STATUS_FROM] == str(entry.status_from or "none")
        assert event.attributes[Attr.STATUS_TO] == str(entry.status_to)
        assert event.attributes[Attr.REASON] == entry.reason
        assert event.attributes[Attr.DURATION_MS] == pytest.approx(entry.duration_ms, abs=1e-3)

    # module spans: spawn and complete events
    for s in module_spans:
        name = (s.attributes or {})[Attr.MODULE]
        assert s.status.status_code is StatusCode.OK
        assert event_names(s) == [ModuleEvent.SPAWN, ModuleEvent.COMPLETE]
        spawn, complete = s.events
        assert dict(spawn.attributes or {}) == {Attr.JOB_ID: job.id, Attr.MODULE: name}
        assert (complete.attributes or {})[Attr.JOB_ID] == job.id
        assert (complete.attributes or {})[Attr.MODULE] == name
        duration = (complete.attributes or {})[Attr.DURATION_MS]
        assert isinstance(duration, float)
        assert duration >= 0
        assert s.start_time is not None
        assert execute.start_time is not None
        assert s.end_time is not None
        assert execute.end_time is not None
        assert execute.start_time <= s.start_time <= s.end_time <= execute.end_time
    beta = module_span(spans, "beta")
    beta_duration = (beta.events[1].attributes or {})[Attr.DURATION_MS]
    assert isinstance(beta_duration, float)
    assert beta_duration >= 9  # slept 10 ms (asyncio may wake a clock tick early)


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "error_type", "event"),
    [
        pytest.param(FakeModule("broken", fail("malformed manifest")), "module", ModuleEvent.ERROR, id="error"),
        pytest.param(FakeModule("broken", panic("boom")), "module_panic", ModuleEvent.PANIC, id="panic"),
        pytest.param(
            FakeModule("broken", hang(), expected_runtime=0.05, timeout=0.2),
            "module_timeout",
            ModuleEvent.TIMEOUT,
            id="timeout",
        ),
    ],
)
async def test_failing_module_marks_its_span_and_the_root(
    tmp_path: Path, harness: TelemetryHarness, module: FakeModule, error_type: str, event: ModuleEvent
) -> None:
    async with app_with(tmp_path, harness, [FakeModule("fine", ok()), module]) as app:
        job = await run_job(app, request(tmp_path))
    assert job.status is JobStatus.FAILED
    spans = harness.trace(job.trace.trace_id)

    broken = module_span(spans, "broken")
    assert broken.status.status_code is StatusCode.ERROR
    assert (broken.attributes or {})[Attr.ERROR_TYPE] == error_type
    [module_event] = events_named(broken, event)
    assert (module_event.attributes or {})[Attr.JOB_ID] == job.id
    assert (module_event.attributes or {})[Attr.MODULE] == "broken"
    assert (module_event.attributes or {})[Attr.ERROR]
    assert ModuleEvent.COMPLETE not in event_names(broken)
    exception = exception_event_attrs(broken)  # semantic conventions: exception.type/message/stacktrace
    assert exception["exception.type"]
    assert "exception.stacktrace" in exception
    if event is ModuleEvent.ERROR:
        assert (module_event.attributes or {})[Attr.ERROR] == "malformed manifest"
        assert exception["exception.type"] == "orchestrator.domain.errors.ModuleError"  # fully qualified
        assert exception["exception.message"] == "malformed manifest"
    elif event is ModuleEvent.PANIC:
        assert exception["exception.type"] == "RuntimeError"
        assert "RuntimeError: boom" in str(exception["exception.stacktrace"])
        assert "Traceback" in str(exception["exception.stacktrace"])
    else:
        assert exception["exception.type"] == "TimeoutError"
        assert ModuleEvent.OVERRUN in event_names(broken), "a timeout also exceeded the expected runtime"

    fine = module_span(spans, "fine")
    assert fine.status.status_code is StatusCode.OK
    assert Attr.ERROR_TYPE not in (fine.attributes or {})

    root = root_of(spans)
    assert root.status.status_code is StatusCode.ERROR
    attrs = dict(root.attributes or {})
    assert attrs[Attr.STATUS] == "failed"
    assert attrs[Attr.ERROR_TYPE] == error_type
    assert attrs[Attr.ERROR_CATEGORY] == error_type
    assert attrs[Attr.PHASE] == "execute"
    assert event_names(root)[-1] == LifecycleEvent.FAIL
    fail_event = root.events[-1]
    assert (fail_event.attributes or {})[Attr.STATUS_TO] == "failed"
    assert "broken" in str((fail_event.attributes or {})[Attr.REASON])


async def test_user_cancellation(tmp_path: Path, harness: TelemetryHarness) -> None:
    started = {name: anyio.Event() for name in ("stuck1", "stuck2")}
    modules = [
        FakeModule("quick", ok()),
        FakeModule("stuck1", hang(), started=started["stuck1"]),
        FakeModule("stuck2", hang(), started=started["stuck2"]),
    ]
    control = JobControl()
    async with app_with(tmp_path, harness, modules) as app:
        created = await app.create.execute(request(tmp_path, modules=["quick", "stuck1", "stuck2"]))
        claimed = await app.workflow.claim("w1", lease_seconds=30)
        assert claimed is not None

        async def cancel_once_running() -> None:
            for event in started.values():
                await event.wait()
            control.cancel(CancelKind.USER, "stopped by the test")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_running)
                await app.execute.execute(claimed, control=control, worker_id="w1")
        job = await app.store.get(created.id)
    assert job.status is JobStatus.CANCELLED

    spans = harness.trace(job.trace.trace_id)
    root = root_of(spans)
    assert event_names(root) == [
        LifecycleEvent.CREATE,
        LifecycleEvent.ENQUEUE,
        LifecycleEvent.START,
        LifecycleEvent.CANCEL,
    ]
    cancel = root.events[-1]
    assert (cancel.attributes or {})[Attr.REASON] == "stopped by the test"
    assert (cancel.attributes or {})[Attr.STATUS_TO] == "cancelled"
    attrs = dict(root.attributes or {})
    assert attrs[Attr.STATUS] == "cancelled"
    assert attrs[Attr.ERROR_TYPE] == "cancelled"
    assert root.status.status_code is not StatusCode.ERROR, "a cancellation is not an error"

    for name in ("stuck1", "stuck2"):
        s = module_span(spans, name)
        assert (s.attributes or {})[Attr.ERROR_TYPE] == "cancelled"
        [error] = events_named(s, ModuleEvent.ERROR)
        assert (error.attributes or {})[Attr.ERROR] == "cancelled"
    quick = module_span(spans, "quick")
    assert Attr.ERROR_TYPE not in (quick.attributes or {})
    assert ModuleEvent.COMPLETE in event_names(quick)
    assert root.context is not None
    assert [s.name for s in children_by_parent(spans)[root.context.span_id]] == PHASES


# -- links ----------------------------------------------------------------------------------


async def test_caller_traceparent_becomes_a_link(tmp_path: Path, harness: TelemetryHarness) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with app_with(tmp_path, harness, [FakeModule("alpha", ok())]) as app:
        job = await run_job(app, request(tmp_path, traceparent=f"00-{caller_trace}-{caller_span}-01"))
    root = root_of(harness.trace(job.trace.trace_id))
    assert job.trace.trace_id != caller_trace, "the job gets a trace of its own"
    [link] = root.links
    assert format(link.context.trace_id, "032x") == caller_trace
    assert format(link.context.span_id, "016x") == caller_span
    assert (link.attributes or {}).get("link.kind") == "caller"


async def test_malformed_traceparent_is_ignored(tmp_path: Path, harness: TelemetryHarness) -> None:
    async with app_with(tmp_path, harness, [FakeModule("alpha", ok())]) as app:
        job = await run_job(app, request(tmp_path, traceparent="00-not-a-traceparent-01"))
    assert job.status is JobStatus.COMPLETED
    assert job.trace.link is None
    root = root_of(harness.trace(job.trace.trace_id))
    assert list(root.links) == []


# -- recovery -------------------------------------------------------------------------------


async def test_lease_expiry_recovery_shows_the_lost_attempt(tmp_path: Path, harness: TelemetryHarness) -> None:
    async with app_with(tmp_path, harness, [FakeModule("alpha", ok())]) as app:
        created = await app.create.execute(request(tmp_path))
        lost = await app.workflow.claim("dead-worker", lease_seconds=0.001)
        assert lost is not None
        await anyio.sleep(0.05)  # the lease runs out; the worker never runs the job
        expired = await app.store.expired(now_ns=now_ns())
        assert [j.id for j in expired] == [created.id]
        requeued = await app.workflow.recover(expired[0], max_attempts=3, worker_id="reaper")
        assert requeued.status is JobStatus.QUEUED
        assert requeued.attempt == 2
        claimed = await app.workflow.claim("live-worker", lease_seconds=30)
        assert claimed is not None
        assert claimed.id == created.id
        await app.execute.execute(claimed, worker_id="live-worker")
        job = await app.store.get(created.id)
    assert job.status is JobStatus.COMPLETED
    assert job.attempt == 2

    spans = harness.trace(job.trace.trace_id)
    root = root_of(spans)
    assert (root.attributes or {})[Attr.ATTEMPT] == 2
    assert event_names(root) == [
        LifecycleEvent.CREATE,
        LifecycleEvent.ENQUEUE,
        LifecycleEvent.START,
        LifecycleEvent.RECOVER,
        LifecycleEvent.START,
        LifecycleEvent.COMPLETE,
    ]
    recover = events_named(root, LifecycleEvent.RECOVER)[0]
    assert (recover.attributes or {})[Attr.REASON] == "lease_expired"
    assert (recover.attributes or {})[Attr.STATUS_FROM] == "running"
    assert (recover.attributes or {})[Attr.STATUS_TO] == "queued"

    assert root.context is not None
    phases = children_by_parent(spans)[root.context.span_id]
    executes = find_spans(phases, SpanName.EXECUTE)
    assert len(executes) == 2
    lost_span = one_span(executes, SpanName.EXECUTE, **{Attr.ERROR_TYPE: "worker_lost"})
    assert (lost_span.attributes or {})[Attr.ATTEMPT] == 1
    assert (lost_span.attributes or {})[Attr.WORKER_ID] == "dead-worker"
    assert lost_span.status.status_code is StatusCode.ERROR
    final = one_span(executes, SpanName.EXECUTE, **{Attr.ATTEMPT: 2})
    assert Attr.ERROR_TYPE not in (final.attributes or {})
    assert len(find_spans(phases, SpanName.QUEUED)) == 2, "one queued span per wait in the queue"
    [module] = find_spans(spans, SpanName.MODULE)
    assert module.parent is not None
    assert final.context is not None
    assert module.parent.span_id == final.context.span_id
    assert (module.attributes or {})[Attr.ATTEMPT] == 2


# -- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    # The parent-based one is the OTEL_TRACES_SAMPLER default: spans emitted from records
    # (parented on the job's root as sampled) must still follow the job's own decision.
    [ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.0))],
    ids=["always-off", "parent-based-ratio-0"],
)
async def test_sampled_out_job_exports_no_spans_but_logs(tmp_path: Path, sampler: Sampler) -> None:
    sampled_out = build_harness(sampler=sampler)
    try:
        with captured_otlp_logs() as exporter:
            async with app_with(tmp_path, sampled_out, [FakeModule("alpha", ok())]) as app:
                job = await run_job(app, request(tmp_path))
        assert job.status is JobStatus.COMPLETED
        assert job.trace.sampled is False
        assert sampled_out.spans() == []

        records = [r for r in log_records(exporter) if (r.log_record.attributes or {}).get(Attr.JOB_ID) == job.id]
        names = {r.log_record.event_name for r in records}
        # (A module's spawn and completion are debug records; the fan-out aggregate is the info one.)
        assert {LifecycleEvent.CREATE, LifecycleEvent.COMPLETE, ModuleEvent.FANOUT} <= names
        for r in records:
            if r.log_record.event_name in set(LifecycleEvent):
                assert format(r.log_record.trace_id or 0, "032x") == job.trace.trace_id, r.log_record.event_name
    finally:
        sampled_out.shutdown()


@pytest.mark.parametrize("fail", [False, True])
def test_a_phase_span_is_current_in_its_block_and_ended_with_its_outcome_at_the_exit(fail: bool) -> None:
    harness = build_harness()
    job = Job.new(project_id="p", source="/x", modules=("a",), options=JobOptions(), trace=TraceContext.new())
    before = otel_trace.get_current_span()
    try:
        with harness.telemetry.phase(job, SpanName.FINALIZE, worker_id="w") as span:
            assert otel_trace.get_current_span() is span
            assert span.is_recording()
            if fail:
                raise ValueError("refused")
    except ValueError:
        assert fail
    assert otel_trace.get_current_span() is before
    (ended,) = harness.spans()
    assert ended.name == SpanName.FINALIZE
    assert format(ended.context.trace_id, "032x") == job.trace.trace_id
    assert (ended.attributes or {})["worker_id"] == "w"
    assert ended.status.status_code is (StatusCode.ERROR if fail else StatusCode.UNSET)
    assert [e.name for e in ended.events] == (["exception"] if fail else [])
    # Its duration recorded under the phase's name, once.
    assert harness.histogram_counts(Metric.PHASE_DURATION, "phase") == {("finalize",): 1}
    harness.shutdown()
