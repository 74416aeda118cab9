"""Log records carry the trace and span ids of the span active when they were written:
in the OTLP log pipeline (the production handler and context filter) and in the JSON
lines written to stderr."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from telemetry_helpers import (
    FakeModule,
    TelemetryHarness,
    captured_otlp_logs,
    find_spans,
    log_records,
    ok,
    run_job,
    span_hex_ids,
)

from orchestrator.bootstrap import open_app
from orchestrator.domain import Job, JobStatus
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from otel import logs
from otel.vocabulary import Attr, LifecycleEvent, ModuleEvent, SpanName

pytestmark = pytest.mark.anyio

MODULES = ("alpha", "beta", "gamma", "delta")
MODULE_EVENTS = (ModuleEvent.SPAWN, ModuleEvent.COMPLETE)


async def run_modules_job(tmp_path: Path, harness: TelemetryHarness) -> Job:
    source = tmp_path / "project"
    source.mkdir()
    (source / "README.md").write_text("# project\n", encoding="utf-8")
    registry = ModuleRegistry(FakeModule(name, ok(0.005 * i)) for i, name in enumerate(MODULES))
    async with open_app(Settings(data_dir=tmp_path / "data"), telemetry=harness.telemetry, registry=registry) as app:
        job = await run_job(app, {"project_id": "proj-logs", "source": str(source)})
    assert job.status is JobStatus.COMPLETED
    return job


def module_spans(harness: TelemetryHarness, job: Job) -> dict[str, ReadableSpan]:
    spans = find_spans(harness.trace(job.trace.trace_id), SpanName.MODULE)
    by_module = {str((s.attributes or {})[Attr.MODULE]): s for s in spans}
    assert sorted(by_module) == sorted(MODULES)
    return by_module


async def test_otlp_log_records_carry_their_module_span(tmp_path: Path, harness: TelemetryHarness) -> None:
    # A module's completion is a debug record (its span and the fan-out aggregate carry it).
    with captured_otlp_logs(logging.DEBUG) as exporter:
        job = await run_modules_job(tmp_path, harness)
    spans = module_spans(harness, job)

    for event_name in MODULE_EVENTS:
        records = log_records(exporter, event_name)
        assert sorted(str((r.log_record.attributes or {})[Attr.MODULE]) for r in records) == sorted(MODULES)
        for r in records:
            record = r.log_record
            attributes = dict(record.attributes or {})
            module = str(attributes[Attr.MODULE])
            trace_id, span_id = span_hex_ids(spans[module])
            assert record.event_name == event_name
            assert format(record.trace_id or 0, "032x") == job.trace.trace_id == trace_id
            assert format(record.span_id or 0, "016x") == span_id, f"{event_name} of {module}: not its own span"
            assert attributes[Attr.JOB_ID] == job.id
            assert attributes[Attr.PROJECT_ID] == "proj-logs"
            assert logs.EVENT_KEY not in attributes, "the event name is promoted, not left as an attribute"
            assert logs.FIELDS_KEY not in attributes


async def test_every_lifecycle_log_record_is_in_the_jobs_trace(tmp_path: Path, harness: TelemetryHarness) -> None:
    with captured_otlp_logs() as exporter:
        job = await run_modules_job(tmp_path, harness)
    lifecycle = [r.log_record for r in log_records(exporter) if r.log_record.event_name in set(LifecycleEvent)]
    assert [r.event_name for r in lifecycle] == [
        LifecycleEvent.CREATE,
        LifecycleEvent.ENQUEUE,
        LifecycleEvent.START,
        LifecycleEvent.COMPLETE,
    ]
    for record in lifecycle:
        assert format(record.trace_id or 0, "032x") == job.trace.trace_id, record.event_name
        assert record.span_id, record.event_name
        assert (record.attributes or {})[Attr.JOB_ID] == job.id


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """configure_logging's JSON formatter writing to a buffer; the logging setup is
    restored afterwards."""
    root = logging.getLogger()
    saved_root_level = root.level
    saved = {name: logging.getLogger(name).level for name in logs.LOGGER_NAMES}
    stream = io.StringIO()
    handler = logs.configure_logging(logging.DEBUG, "json", stream=stream)  # module completions are debug
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def test_json_log_lines_carry_their_module_span(
    tmp_path: Path, harness: TelemetryHarness, json_stream: io.StringIO
) -> None:
    job = await run_modules_job(tmp_path, harness)
    spans = module_spans(harness, job)

    lines: list[dict[str, Any]] = [json.loads(line) for line in json_stream.getvalue().splitlines()]
    for event_name in MODULE_EVENTS:
        found = [line for line in lines if line.get("event") == event_name]
        assert sorted(line[Attr.MODULE] for line in found) == sorted(MODULES)
        for line in found:
            trace_id, span_id = span_hex_ids(spans[line[Attr.MODULE]])
            assert line[Attr.TRACE_ID] == trace_id
            assert line[Attr.SPAN_ID] == span_id, f"{event_name} of {line[Attr.MODULE]}: not its own span"
            assert line[Attr.JOB_ID] == job.id
            assert line[Attr.PROJECT_ID] == "proj-logs"
    for line in lines:
        if line.get("event") in set(LifecycleEvent):
            assert line.get(Attr.TRACE_ID) == job.trace.trace_id, line["event"]


async def test_a_modules_spawn_and_completion_are_not_info_records(tmp_path: Path, harness: TelemetryHarness) -> None:
    # Per-job records beyond the lifecycle, module failures and the fan-out aggregate are
    # debug (issue 18): at info, a job of four modules writes its fan-out aggregate only.
    with captured_otlp_logs(logging.INFO) as exporter:
        await run_modules_job(tmp_path, harness)
    assert log_records(exporter, ModuleEvent.SPAWN) == []
    assert log_records(exporter, ModuleEvent.COMPLETE) == []
    assert len(log_records(exporter, ModuleEvent.FANOUT)) == 1
