"""The OTLP log handler's direct path (a record handed straight to the batch processor's
queue, skipping the SDK logger's pipeline) exports what the SDK's own path exports.

Every comparison runs the same ``logging`` records through two handlers side by side:
the handler with a sink (the direct path) and the same handler without one (the SDK's
``Logger.emit`` and processor). Both batches are encoded by the official OTLP encoder
and the JSON encoder of the embedded files and must be equal, the observed timestamp
(read from the clock on each path) aside.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import Logger as SdkLogger
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordDroppedAttributesWarning,
    LogRecordLimits,
    ReadableLogRecord,
)
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel import logs
from otel.otlp_json import encode_logs_json
from otel.setup import setup_telemetry

RESOURCE = Resource.create({"service.name": "orchestrator", "service.instance.id": "i-1"})


class ListSink:
    """A sink keeping what it is given (what the batch processor would queue)."""

    def __init__(self) -> None:
        self.records: list[ReadableLogRecord] = []

    def emit_readable(self, record: ReadableLogRecord) -> None:
        self.records.append(record)


class TwoPaths:
    """One logger whose records reach both paths: ``direct`` and ``sdk``."""

    def __init__(self, logger: logging.Logger, sink: ListSink, exporter: InMemoryLogRecordExporter) -> None:
        self.logger, self._sink, self._exporter = logger, sink, exporter
        self.counted = False  # a count limit is set (records may drop attributes)

    def batches(self) -> tuple[list[ReadableLogRecord], list[ReadableLogRecord]]:
        return list(self._sink.records), list(self._exporter.get_finished_logs())


@pytest.fixture
def paths(request: pytest.FixtureRequest) -> Iterator[TwoPaths]:
    limits: LogRecordLimits = getattr(request, "param", None) or LogRecordLimits()
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False, log_record_limits=limits)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    sink = ListSink()
    direct = logs.OtlpLogHandler(logger_provider=provider, sink=sink, limits=limits)
    sdk = logs.OtlpLogHandler(logger_provider=provider)
    logger = logging.getLogger("orchestrator.test_log_direct")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    for handler in (direct, sdk):
        handler.addFilter(logs.ContextFilter(trace_ids=False))
        logger.addHandler(handler)
    two = TwoPaths(logger, sink, exporter)
    two.counted = (limits.max_log_record_attributes or 128) < 128  # below the default count limit
    try:
        yield two
    finally:
        for handler in (direct, sdk):
            logger.removeHandler(handler)
        provider.shutdown()


def _same_clock(batch: Sequence[ReadableLogRecord]) -> Sequence[ReadableLogRecord]:
    for readable in batch:
        readable.log_record.observed_timestamp = 1
    return batch


def assert_same_export(direct: Sequence[ReadableLogRecord], sdk: Sequence[ReadableLogRecord]) -> None:
    assert len(direct) == len(sdk) > 0
    direct, sdk = _same_clock(direct), _same_clock(sdk)
    assert encode_logs(direct) == encode_logs(sdk)
    assert encode_logs_json(direct) == encode_logs_json(sdk)
    assert [r.dropped_attributes for r in direct] == [r.dropped_attributes for r in sdk]


def test_records_of_every_shape_export_as_on_the_sdk_path(paths: TwoPaths) -> None:
    logger = paths.logger
    other = logging.getLogger("orchestrator.test_log_direct.other")  # another scope
    other.propagate = True
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    logger.warning("outside any span")
    with tracer.start_as_current_span("job"):
        logs.event(logger, logging.INFO, "job.lifecycle.start", "queued -> running: claimed",
                   job_id="j", project_id="p", attempt=2, ratio=0.5, ok=False, path=Path("/srv/x"))
        logger.info("library extras", extra={"items": [1, 2], "obj": object(), "plain": "x"})
        try:
            raise ValueError("bad \x00 value")
        except ValueError:
            logger.exception("with a traceback")
        logger.debug("")
        logger.critical("%s and %d", "args", 3)
    other.parent = logger
    other.error("from another logger ☃")
    direct, sdk = paths.batches()
    assert len(direct) == 7
    assert_same_export(direct, sdk)
    fields = dict(direct[1].log_record.attributes or {})
    assert (fields["job_id"], fields["path"], fields["attempt"]) == ("j", "/srv/x", 2)
    assert direct[1].log_record.event_name == "job.lifecycle.start"
    assert direct[1].log_record.trace_id != 0
    assert direct[0].log_record.trace_id == 0
    assert {r.instrumentation_scope.name for r in direct if r.instrumentation_scope} == {
        "orchestrator.test_log_direct", "orchestrator.test_log_direct.other"}


@pytest.mark.parametrize(
    "paths",
    [LogRecordLimits(max_attributes=3), LogRecordLimits(max_attribute_length=4)],
    indirect=True,
    ids=["count-limit", "length-limit"],
)
def test_attribute_limits_apply_as_on_the_sdk_path(paths: TwoPaths) -> None:
    with pytest.warns(LogRecordDroppedAttributesWarning) if paths.counted else contextlib.nullcontext() as seen:
        logs.event(paths.logger, logging.INFO, "job.lifecycle.fail", "a long message",
                   job_id="0190c0de-long", project_id="project", reason="module failed", attempt=1)
    if seen is not None:  # both paths warned that attributes were dropped
        assert len([w for w in seen if w.category is LogRecordDroppedAttributesWarning]) == 2
    direct, sdk = paths.batches()
    assert_same_export(direct, sdk)
    attributes = dict(direct[0].log_record.attributes or {})
    if paths.counted:  # the oldest attributes dropped, the last three kept
        assert attributes == {"project_id": "project", "reason": "module failed", "attempt": 1}
    else:
        assert (attributes["job_id"], attributes["reason"], attributes["attempt"]) == ("0190", "modu", 1)
    assert direct[0].dropped_attributes == sdk[0].dropped_attributes


def test_the_direct_record_holds_no_context(paths: TwoPaths) -> None:
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    with tracer.start_as_current_span("job"):
        paths.logger.info("inside")
    direct, sdk = paths.batches()
    # As the SDK's batch processor does to the copy it queues (this fixture's simple
    # processor does not): the ids are kept, the context (and the span it holds) is not.
    assert direct[0].log_record.context == {}
    assert sdk[0].log_record.context != {}
    assert direct[0].log_record.span_id == sdk[0].log_record.span_id != 0


@contextlib.contextmanager
def handled(name: str, provider: LoggerProvider, sink: ListSink) -> Iterator[logging.Logger]:
    """Logger ``name`` with only a direct-path handler to ``sink``."""
    logger = logging.getLogger(name)
    logger.propagate = False
    handler = logs.OtlpLogHandler(logger_provider=provider, sink=sink)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def test_a_record_logged_while_emitting_is_skipped_not_recursed() -> None:
    name = "orchestrator.test_log_direct.recursive"

    class Echo(ListSink):
        def emit_readable(self, record: ReadableLogRecord) -> None:
            super().emit_readable(record)
            logging.getLogger(name).warning("logged by the sink")  # would recurse without the guard

    sink = Echo()
    with handled(name, LoggerProvider(resource=RESOURCE, shutdown_on_exit=False), sink) as logger:
        logger.warning("first")
    assert [r.log_record.body for r in sink.records] == ["first"]


def test_a_disabled_provider_takes_the_sdk_path_and_exports_nothing() -> None:
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider._disabled = True  # what OTEL_SDK_DISABLED does to an SDK provider
    sink = ListSink()
    with handled("orchestrator.test_log_direct.disabled", provider, sink) as logger:
        logger.warning("nowhere")
    assert sink.records == []


def test_the_products_setup_takes_the_direct_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_telemetry wires the handler to its batch processor: a record reaches the
    embedded file without the SDK logger's emit (which another SDK release's
    processor, without the queue relied on, would fall back to)."""
    through_sdk: list[object] = []
    original = SdkLogger.emit

    def counting_emit(self: SdkLogger, *args: Any, **kwargs: Any) -> None:
        through_sdk.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(SdkLogger, "emit", counting_emit)
    env = {"OTEL_SERVICE_NAME": "orchestrator-test"}
    telemetry = setup_telemetry(service_version="0.0.0", telemetry_dir=tmp_path, env=env, metric_interval_s=60)
    try:
        logs.event(logging.getLogger("orchestrator.lifecycle"), logging.INFO, "job.lifecycle.enqueue",
                   "pending -> queued: enqueued", job_id="j-direct", project_id="p")
        telemetry.flush(5.0)
    finally:
        telemetry.shutdown(5.0)
    lines = (tmp_path / "logs.jsonl").read_text(encoding="utf-8").splitlines()
    records = [r for line in lines for rl in json.loads(line)["resourceLogs"]
               for sl in rl["scopeLogs"] for r in sl["logRecords"]]
    ours = [r for r in records if {"key": "job_id", "value": {"stringValue": "j-direct"}} in r["attributes"]]
    assert len(ours) == 1
    assert ours[0]["eventName"] == "job.lifecycle.enqueue"
    assert through_sdk == []
