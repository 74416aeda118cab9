"""Span records emitted directly (a finished ``ReadableSpan`` handed to the tracer's span
processors) export exactly what the SDK path (a span started with forced ids, its
events added, ended) exports: compared through the official OTLP encoder, with the
sampler and span limits of the provider in play."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

from orchestrator.telemetry import as_current
from orchestrator.tracing import emit
from orchestrator.tracing.records import STATUS_ERROR, STATUS_OK, SpanEvent, SpanRecord
from otel.ids import JobIdGenerator

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
RESOURCE = Resource.create({"service.name": "orchestrator", "service.instance.id": "i-1"})


def records() -> list[SpanRecord]:
    """A job's spans of every shape the store describes."""
    lifecycle = tuple(
        SpanEvent(f"job.lifecycle.{name}", 1_000 + n, {"job_id": "j", "status_to": name, "duration_ms": n * 0.5,
                                                         "attempt": 1, "reason": "" if n else "created"})
        for n, name in enumerate(("create", "enqueue", "start", "fail"))
    )
    return [
        SpanRecord(TRACE, "00000000000000a1", ROOT, "job.execute", 1_100, 1_900,
                   {"job_id": "j", "attempt": 1, "worker_id": "host:1:abc", "reconstructed": True},
                   events=(SpanEvent("job.module.overrun", 1_500, {"module": "secrets", "ratio": 1.5}),),
                   status_code=STATUS_ERROR, status_message="worker_lost"),
        SpanRecord(TRACE, "00000000000000a2", ROOT, "job.module", 1_200, 1_300,
                   {"job_id": "j", "module": "todos", "ok": True}, status_code=STATUS_OK),
        SpanRecord(TRACE, "00000000000000a3", ROOT, "job.queued", 1_050, 1_100, {}),
        SpanRecord(TRACE, ROOT, "", "job", 1_000, 2_000,
                   {"job_id": "j", "project_id": "p", "module_count": 2, "status": "failed", "reason": "x ☃"},
                   events=lifecycle, status_code=STATUS_ERROR, status_message="module secrets failed",
                   links=(("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", {"link.kind": "caller"}),
                          ("not a traceparent", {"link.kind": "caller"}))),
    ]


def exported(sampler: Sampler | None = None, limits: SpanLimits | None = None, *, direct: bool,
             spans: Sequence[SpanRecord] | None = None, monkeypatch: pytest.MonkeyPatch,
             ids: JobIdGenerator | None = None) -> list[ReadableSpan]:
    options: dict[str, Any] = {"sampler": sampler} if sampler else {}
    if limits:
        options["span_limits"] = limits
    provider = TracerProvider(resource=RESOURCE, id_generator=ids or JobIdGenerator(), shutdown_on_exit=False,
                              **options)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("orchestrator", "1.0")
    with monkeypatch.context() as patch:
        if not direct:
            patch.setattr(emit._DirectEmitter, "of", classmethod(lambda cls, tracer: None))
        emit.emit_spans(tracer, spans if spans is not None else records())
    provider.shutdown()
    return list(memory.get_finished_spans())


def assert_same(direct: list[ReadableSpan], sdk: list[ReadableSpan]) -> None:
    assert [s.name for s in direct] == [s.name for s in sdk]
    assert encode_spans(direct) == encode_spans(sdk)
    assert [(s.dropped_attributes, s.dropped_events, s.dropped_links) for s in direct] == [
        (s.dropped_attributes, s.dropped_events, s.dropped_links) for s in sdk]


def test_every_shape_exports_as_on_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    direct = exported(direct=True, monkeypatch=monkeypatch)
    assert_same(direct, exported(direct=False, monkeypatch=monkeypatch))
    root = next(s for s in direct if s.name == "job")
    # Independently of the SDK path: the record's own ids, times, events and link.
    assert root.context is not None
    assert (format(root.context.trace_id, "032x"), format(root.context.span_id, "016x")) == (TRACE, ROOT)
    assert root.parent is None
    assert (root.start_time, root.end_time) == (1_000, 2_000)
    assert [e.timestamp for e in root.events] == [1_000, 1_001, 1_002, 1_003]
    assert len(root.links) == 1
    assert root.links[0].context.span_id == 0x00F067AA0BA902B7
    assert root.status.description == "module secrets failed"
    child = next(s for s in direct if s.name == "job.module")
    assert child.parent is not None
    assert format(child.parent.span_id, "016x") == ROOT
    assert child.status.description is None  # an OK status carries no description


class RandomJobIds(JobIdGenerator):
    def is_trace_id_random(self) -> bool:
        return True


def test_a_root_of_random_trace_ids_is_flagged_as_on_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    direct = exported(direct=True, monkeypatch=monkeypatch, ids=RandomJobIds())
    assert_same(direct, exported(direct=False, monkeypatch=monkeypatch, ids=RandomJobIds()))
    # W3C trace flags: bit 0 sampled, bit 1 random trace id (on a root only: a child
    # inherits the flag from its parent's context, which the store does not record).
    assert {s.name: int(s.context.trace_flags) for s in direct if s.context} == {
        "job": 0x03, "job.execute": 0x01, "job.module": 0x01, "job.queued": 0x01}


def test_the_direct_path_is_taken_for_plain_records(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("the SDK path was taken")

    monkeypatch.setattr(emit, "_emit", refuse)
    assert len(exported(direct=True, monkeypatch=monkeypatch)) == 4


@pytest.mark.parametrize(
    "limits",
    [SpanLimits(max_events=2), SpanLimits(max_span_attributes=2), SpanLimits(max_event_attributes=1),
     SpanLimits(max_attribute_length=3), SpanLimits(max_links=0)],
    ids=["events", "attributes", "event-attributes", "length", "links"],
)
def test_records_beyond_the_span_limits_are_cut_as_the_sdk_cuts_them(
    limits: SpanLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = exported(limits=limits, direct=True, monkeypatch=monkeypatch)
    assert_same(direct, exported(limits=limits, direct=False, monkeypatch=monkeypatch))
    # The limit did cut something: the export differs from the unlimited one.
    assert encode_spans(direct) != encode_spans(exported(direct=True, monkeypatch=monkeypatch))


def test_a_value_of_another_type_goes_through_the_sdks_cleaning(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = [SpanRecord(TRACE, ROOT, "", "job", 1, 2, {"list": ["a", "b"], "none": None})]  # type: ignore[dict-item]
    direct = exported(spans=odd, direct=True, monkeypatch=monkeypatch)
    assert_same(direct, exported(spans=odd, direct=False, monkeypatch=monkeypatch))
    assert dict(direct[0].attributes or {}) == {"list": ("a", "b"), "none": None}


class RecordOnly(Sampler):
    """Records every span without sampling it, and says so in an attribute and the trace state."""

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: TraceState | None = None) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {**(attributes or {}), "sampler": "record-only"},
                              TraceState([("vendor", "x")]))

    def get_description(self) -> str:
        return "RecordOnly"


class Annotating(RecordOnly):
    """Samples every span and adds attributes of its own that need the SDK's cleaning (a
    list, a value of no attribute type), counting its calls."""

    calls = 0

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: TraceState | None = None) -> SamplingResult:
        self.calls += 1
        added = {"sampler.tags": ["a", "b"], "sampler.odd": 1j}
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {**(attributes or {}), **added})  # type: ignore[dict-item]


class Counting(SimpleSpanProcessor):
    def __init__(self) -> None:
        super().__init__(InMemorySpanExporter())
        self.ended: list[ReadableSpan] = []
        self.started: list[Any] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)
        super().on_end(span)


def ended_on_both_paths(
    direct_sampler: Sampler, sdk_sampler: Sampler, *, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """The spans the processors were given for ``records()``: directly, then on the SDK path."""
    ended = []
    for direct, sampler in ((True, direct_sampler), (False, sdk_sampler)):
        provider = TracerProvider(resource=RESOURCE, id_generator=JobIdGenerator(), sampler=sampler,
                                  shutdown_on_exit=False)
        processor = Counting()
        provider.add_span_processor(processor)
        with monkeypatch.context() as patch:
            if not direct:
                patch.setattr(emit._DirectEmitter, "of", classmethod(lambda cls, tracer: None))
            emit.emit_spans(provider.get_tracer("orchestrator"), records())  # (the SDK logs a warning for 1j)
        provider.shutdown()
        ended.append(processor.ended)
    return ended[0], ended[1]


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.0)), RecordOnly()],
                         ids=["always-off", "ratio-0", "record-only"])
def test_the_providers_sampler_decides_as_on_the_sdk_path(sampler: Sampler, monkeypatch: pytest.MonkeyPatch) -> None:
    direct_ended, sdk_ended = ended_on_both_paths(sampler, sampler, monkeypatch=monkeypatch)
    assert [s.name for s in direct_ended] == [s.name for s in sdk_ended]
    assert encode_spans(direct_ended) == encode_spans(sdk_ended) if direct_ended else sdk_ended == []
    if isinstance(sampler, RecordOnly):  # recorded, not sampled: handed on, never exported
        assert len(direct_ended) == 4
        assert all(not s.context.trace_flags.sampled for s in direct_ended if s.context)
        assert all(dict(s.attributes or {})["sampler"] == "record-only" for s in direct_ended)
        assert all(s.context and s.context.trace_state.get("vendor") == "x" for s in direct_ended)
    else:
        # The root has no parent: the sampler drops it; children follow their (sampled) parent.
        assert "job" not in [s.name for s in direct_ended]


def test_a_samplers_own_odd_attributes_are_cleaned_with_one_sampler_call_per_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    samplers = Annotating(), Annotating()
    ended = ended_on_both_paths(*samplers, monkeypatch=monkeypatch)
    # The direct path did not hand a span on to the SDK's, whose sampler would run again.
    assert [s.calls for s in samplers] == [4, 4]
    assert encode_spans(ended[0]) == encode_spans(ended[1])
    assert all(dict(s.attributes or {})["sampler.tags"] == ("a", "b") for s in ended[0])
    assert all(dict(s.attributes or {})["sampler.odd"] == "1j" for s in ended[0])  # as the SDK makes it
    assert [s.dropped_attributes for s in ended[0]] == [s.dropped_attributes for s in ended[1]]


# -- live spans ------------------------------------------------------------------------------

ROOT_CONTEXT = SpanContext(int(TRACE, 16), int(ROOT, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
FAILURE = ValueError("module said no ☃")


def live_calls(span: Any) -> None:
    """What a job's phase and module spans go through, and some they never do."""
    span.set_attribute("index.files", 3)
    span.set_attributes({"expected_ms": 12.5, "ok": True, "outcome": "failed"})
    span.add_event("job.module.spawn", {"job_id": "j", "module": "secrets"}, timestamp=1_500)
    span.add_event("no attributes", timestamp=1_600)
    span.record_exception(FAILURE, attributes={"module": "secrets"}, timestamp=1_700)
    span.set_status(Status(StatusCode.ERROR, "module secrets failed"))
    span.set_attribute("error.type", "module")
    span.update_name("job.module")
    span.end(end_time=1_900)
    span.set_attribute("after.end", 1)  # ignored, as the SDK ignores it


def live(sampler: Sampler | None = None, limits: SpanLimits | None = None, *, direct: bool,
         monkeypatch: pytest.MonkeyPatch, calls: Any = live_calls) -> tuple[Any, list[ReadableSpan], Counting]:
    options: dict[str, Any] = {"sampler": sampler} if sampler else {}
    if limits:
        options["span_limits"] = limits
    provider = TracerProvider(resource=RESOURCE, id_generator=JobIdGenerator(), shutdown_on_exit=False, **options)
    processor = Counting()
    started: list[Any] = []
    processor.on_start = lambda span, parent_context=None: started.append(span)  # type: ignore[method-assign]
    provider.add_span_processor(processor)
    with monkeypatch.context() as patch:
        if not direct:
            patch.setattr(emit._DirectEmitter, "of", classmethod(lambda cls, tracer: None))
        span = emit.start_live_span(
            provider.get_tracer("orchestrator", "1.0"), "job.execute",
            attributes={"job_id": "j", "project_id": "p", "attempt": 1},
            context=trace.set_span_in_context(NonRecordingSpan(ROOT_CONTEXT)),
            start_ns=1_000, ids=(int(TRACE, 16), 0xA4),
        )
        calls(span)
    provider.shutdown()
    processor.started = started
    return span, processor.ended, processor


def test_a_live_span_exports_what_the_sdks_span_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    span, direct, told = live(direct=True, monkeypatch=monkeypatch)
    assert type(span).__name__ == "_LiveSpan"
    sdk_span, sdk, sdk_told = live(direct=False, monkeypatch=monkeypatch)
    assert_same(direct, sdk)
    # The processors are told of the start, with the span, on both paths.
    assert (told.started, sdk_told.started) == ([span], [sdk_span])
    (ended,) = direct
    assert ended.name == "job.module"
    assert ended.parent == ROOT_CONTEXT
    assert ended.context is not None
    assert ended.context.span_id == 0xA4
    assert (ended.start_time, ended.end_time) == (1_000, 1_900)
    assert "after.end" not in (ended.attributes or {})
    assert [e.name for e in ended.events] == ["job.module.spawn", "no attributes", "exception"]
    assert (ended.events[2].attributes or {})["exception.type"] == "ValueError"
    assert ended.status.description == "module secrets failed"


def test_values_of_other_types_and_span_limits_as_on_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def odd(span: Any) -> None:
        span.set_attribute("list", ["a", "b"])
        span.set_attribute("more", 1)
        span.add_event("odd", {"tuple": ("x",), "n": 1}, timestamp=5)
        for n in range(4):
            span.add_event(f"e{n}", {"a": n, "b": n}, timestamp=10 + n)
        span.set_status(StatusCode.OK)
        span.set_status(StatusCode.ERROR, "ignored: OK is final")
        span.end(end_time=99)

    limits = SpanLimits(max_span_attributes=4, max_events=3, max_event_attributes=1)
    for chosen in (None, limits):
        direct = live(limits=chosen, direct=True, monkeypatch=monkeypatch, calls=odd)[1]
        assert_same(direct, live(limits=chosen, direct=False, monkeypatch=monkeypatch, calls=odd)[1])
        assert direct[0].status.status_code is StatusCode.OK
    # 3 attributes at the start and 2 set: one dropped; 5 events, 3 kept.
    assert (direct[0].dropped_attributes, direct[0].dropped_events) == (1, 2)


def test_a_length_limit_leaves_live_spans_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    span, direct, _ = live(limits=SpanLimits(max_attribute_length=4), direct=True, monkeypatch=monkeypatch)
    assert type(span).__name__ != "_LiveSpan"
    assert_same(direct, live(limits=SpanLimits(max_attribute_length=4), direct=False, monkeypatch=monkeypatch)[1])


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, RecordOnly()], ids=["always-off", "record-only"])
def test_a_live_span_follows_the_sampler_as_on_the_sdk_path(sampler: Sampler, monkeypatch: pytest.MonkeyPatch) -> None:
    span, direct, told = live(sampler, direct=True, monkeypatch=monkeypatch)
    sdk_span, sdk, sdk_told = live(sampler, direct=False, monkeypatch=monkeypatch)
    assert len(told.started) == len(sdk_told.started) == (1 if isinstance(sampler, RecordOnly) else 0)
    assert span.get_span_context() == sdk_span.get_span_context()
    assert span.is_recording() == sdk_span.is_recording() is False  # dropped, or ended
    assert encode_spans(direct) == encode_spans(sdk) if direct else sdk == []
    if isinstance(sampler, RecordOnly):
        assert len(direct) == 1
        assert not span.get_span_context().trace_flags.sampled


@pytest.mark.parametrize("fail", [False, True])
def test_as_current_does_what_use_span_does_with_its_three_switches_off(fail: bool) -> None:
    """Whoever owns a span reports its outcome: ``as_current`` only makes it current."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    outer = tracer.start_span("outer")
    inner = tracer.start_span("inner")
    with trace.use_span(outer, end_on_exit=False):
        try:
            with as_current(inner) as entered:
                assert entered is inner
                assert trace.get_current_span() is inner
                if fail:
                    raise ValueError("the owner reports this")
        except ValueError:
            assert fail
        assert trace.get_current_span() is outer
    assert inner.is_recording()  # not ended
    inner.end()
    outer.end()
    (exported,) = [s for s in exporter.get_finished_spans() if s.name == "inner"]
    assert (exported.status.status_code, exported.events) == (trace.StatusCode.UNSET, ())
