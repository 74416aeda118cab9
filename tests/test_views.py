"""``orchestrator report`` and ``orchestrator trace`` over the embedded telemetry files
the demo writes (subprocesses, no OTLP endpoint: the embedded default)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode, set_span_in_context
from telemetry_helpers import CliRun, run_orchestrator

from otel.files import SIGNAL_FILES, FileSpanExporter, JsonlWriter
from otel.vocabulary import Attr, ModuleEvent, SpanName

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Demo:
    cwd: Path
    env: dict[str, str]

    def run(self, *args: str) -> CliRun:
        return run_orchestrator(*args, cwd=self.cwd, env=self.env, timeout=60)

    def json(self, *args: str) -> Any:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    cwd = tmp_path_factory.mktemp("demo")
    ran = Demo(cwd, {"ORCHESTRATOR_DATA_DIR": str(cwd / "data")})
    done = ran.run("demo", "--dir", str(cwd / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (cwd / "data" / "telemetry" / "traces.jsonl").is_file()
    return ran


def jobs_by_project(demo: Demo, *args: str) -> dict[str, dict[str, Any]]:
    return {job["project_id"]: job for job in demo.json("jobs", "--json", *args)}


@pytest.mark.parametrize("source", ["store", "files"])
def test_report_answers_the_four_questions(demo: Demo, source: str) -> None:
    report = demo.json("report", "--from", source, "--json")
    assert report["jobs"] == 4
    assert report["by_status"] == {"completed": 2, "failed": 1, "cancelled": 1}

    # 1. which phase fails most often: every phase, in lifecycle order, zeros included
    assert report["failures_by_phase"] == [
        {"phase": "create", "failures": 0},
        {"phase": "enqueue", "failures": 0},
        {"phase": "queued", "failures": 0},
        {"phase": "claim", "failures": 0},
        {"phase": "execute", "failures": 1},
        {"phase": "finalize", "failures": 0},
        {"phase": "notify", "failures": 0},
    ]

    # 2. which modules exceed their expected runtime: the large project's scan overruns
    overrunning = {row["module"] for row in report["modules"] if row["overruns"] >= 1}
    assert overrunning, report["modules"]
    large = jobs_by_project(demo)["large-monorepo"]
    spans = demo.json("trace", large["id"], "--json")
    overran_in_large = {
        span["attributes"][Attr.MODULE]
        for span in spans
        if span["name"] == SpanName.MODULE and any(e["name"] == ModuleEvent.OVERRUN for e in span["events"])
    }
    # the demo asks it to expect 1 ms of every module: each of them overruns, on any machine
    assert overran_in_large == {"dependencies", "inventory", "python_syntax", "secrets", "todos"}
    assert overran_in_large <= overrunning
    cancelled_job = jobs_by_project(demo)["nightly-batch"]
    cancelled_runs = {r["module"] for r in cancelled_job["results"] if r["outcome"] == "cancelled"}
    for row in report["modules"]:
        # a run cut short by the cancellation says nothing about the module's runtime
        assert row["cancelled_runs"] == (1 if row["module"] in cancelled_runs else 0), row
        assert row["runs"] + row["cancelled_runs"] == 4, row
        assert row["expected_ms"] > 0

    # 3. why jobs failed: every category, cancellations apart, every id listed
    categories = {row["category"]: row for row in report["failures_by_category"]}
    assert {c: row["failures"] for c, row in categories.items()} == {
        "transition": 0,
        "persistence": 0,
        "module": 1,
        "module_timeout": 0,
        "module_panic": 0,
        "module_unavailable": 0,
        "queue": 0,
        "internal": 0,
        "validation": 0,
        "webhook": 0,
    }
    failed = jobs_by_project(demo, "--status", "failed")
    assert list(failed) == ["broken-manifest"]
    assert categories["module"]["jobs"] == [failed["broken-manifest"]["id"]]
    assert categories["module"]["group"] == "module logic"
    assert report["failures_by_group"]["transition/persistence"] == 0
    assert report["cancelled"] == {"count": 1, "jobs": [cancelled_job["id"]]}

    # 4. time in each phase, in lifecycle order, one row each
    phases = [row["phase"] for row in report["time_in_phase"]]
    assert phases == ["create", "queued", "execute", "finalize", "execute (lost or requeued attempts)", "total"]
    rows = {row["phase"]: row for row in report["time_in_phase"]}
    for phase in ("create", "queued", "execute", "finalize", "total"):
        assert rows[phase]["count"] == 4, phase
        assert 0 <= rows[phase]["p50_ms"] <= rows[phase]["p95_ms"] <= rows[phase]["max_ms"]
    assert rows["execute (lost or requeued attempts)"]["count"] == 0
    assert rows["create"]["max_ms"] + rows["queued"]["max_ms"] <= rows["total"]["max_ms"] + 0.2


def test_trace_of_the_failed_job(demo: Demo) -> None:
    [failed] = demo.json("jobs", "--status", "failed", "--json")
    spans = demo.json("trace", failed["id"], "--json")

    roots = [s for s in spans if s["name"] == SpanName.JOB]
    assert len(roots) == 1
    root = roots[0]
    assert root["attributes"][Attr.STATUS] == "failed"
    assert root["attributes"][Attr.JOB_ID] == failed["id"]
    assert (root["trace_id"], root["span_id"]) == (failed["trace_id"], failed["root_span_id"])
    assert root["parent_span_id"] == ""
    assert {s["trace_id"] for s in spans} == {failed["trace_id"]}

    modules = [s for s in spans if s["name"] == SpanName.MODULE]
    assert len(modules) == len(failed["modules"])
    errors = [s for s in modules if s["attributes"].get(Attr.ERROR_TYPE)]
    assert [s["attributes"][Attr.ERROR_TYPE] for s in errors] == ["module"]
    assert errors[0]["attributes"][Attr.MODULE] == "dependencies"


def test_trace_of_an_unknown_job_is_a_usage_error(demo: Demo) -> None:
    done = demo.run("trace", "00000000-0000-7000-8000-000000000000")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "00000000-0000-7000-8000-000000000000" in lines[0]
    assert "Traceback" not in done.stderr


# -- trace, on telemetry files written by the SDK's real exporter path ----------------------


def _write_spans(telemetry_dir: Path, build: Any) -> None:
    """Spans built with the SDK, exported through the embedded default's file exporter."""
    provider = TracerProvider()
    writer = JsonlWriter(telemetry_dir / SIGNAL_FILES["traces"])
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(writer)))
    build(provider.get_tracer("test"))
    provider.shutdown()


def test_trace_of_an_api_created_job_shows_the_jobs_trace_not_the_requests(tmp_path: Path) -> None:
    job_id = "01a22d47-8a5b-78e9-80a2-3e8a8206d739"
    ids: dict[str, str] = {}

    def build(tracer: Any) -> None:
        request = tracer.start_span("POST /jobs", context=Context(), attributes={Attr.JOB_ID: job_id})
        request.end()
        root = tracer.start_span(
            SpanName.JOB, context=Context(), attributes={Attr.JOB_ID: job_id, Attr.STATUS: "completed"}
        )
        create = tracer.start_span(SpanName.CREATE, context=set_span_in_context(root), attributes={Attr.JOB_ID: job_id})
        create.end()
        root.end()
        ids["request"] = format(request.get_span_context().trace_id, "032x")
        ids["job"] = format(root.get_span_context().trace_id, "032x")

    _write_spans(tmp_path / "data" / "telemetry", build)
    done = run_orchestrator("trace", job_id, cwd=tmp_path, env={"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"trace {ids['job']}  job {job_id}"
    assert ids["request"] not in done.stdout
    assert not (tmp_path / "data" / "orchestrator.db").exists()  # a read creates no database


def test_an_interrupted_attempt_is_one_row_saying_what_happened(tmp_path: Path) -> None:
    job_id = "01a22d47-8a5b-78e9-80a2-3e8a8206d740"

    def build(tracer: Any) -> None:
        root = tracer.start_span(
            SpanName.JOB, context=Context(), attributes={Attr.JOB_ID: job_id, Attr.STATUS: "completed", Attr.ATTEMPT: 2}
        )
        parent = set_span_in_context(root)
        interrupted = tracer.start_span(
            SpanName.EXECUTE, context=parent, attributes={Attr.JOB_ID: job_id, Attr.ATTEMPT: 1}
        )
        interrupted.set_attribute(Attr.ERROR_TYPE, "CancelledError")
        interrupted.set_status(Status(StatusCode.ERROR, "cancelled"))
        interrupted.end()
        lost = tracer.start_span(
            SpanName.EXECUTE,
            context=parent,
            attributes={
                Attr.JOB_ID: job_id,
                Attr.ATTEMPT: 1,
                Attr.ERROR_TYPE: "worker_lost",
                Attr.REASON: "lease_expired",
            },
        )
        lost.end()
        tracer.start_span(SpanName.EXECUTE, context=parent, attributes={Attr.JOB_ID: job_id, Attr.ATTEMPT: 2}).end()
        root.end()

    _write_spans(tmp_path / "data" / "telemetry", build)
    done = run_orchestrator("trace", job_id, cwd=tmp_path, env={"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "execute (attempt" in line]
    assert len(rows) == 2, done.stdout
    assert "execute (attempt 1)" in rows[0]
    assert "error.type=interrupted" in rows[0]
    assert "worker lost: recovered" in rows[0]
    assert "(lease_expired)" in rows[0]
    assert "execute (attempt 2)" in rows[1]
    assert "CancelledError" not in done.stdout
