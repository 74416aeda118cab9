"""``orchestrator report`` and ``orchestrator trace`` over the embedded telemetry files
the demo writes (subprocesses, no OTLP endpoint: the embedded default)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telemetry_helpers import CliRun, run_orchestrator

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
    done = ran.run("demo")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (cwd / "data" / "telemetry" / "traces.jsonl").is_file()
    return ran


def jobs_by_project(demo: Demo, *args: str) -> dict[str, dict[str, Any]]:
    return {job["project_id"]: job for job in demo.json("jobs", "--json", *args)}


def test_report_answers_the_four_questions(demo: Demo) -> None:
    report = demo.json("report", "--json")
    assert report["jobs"] == 4
    assert report["by_status"] == {"completed": 2, "failed": 1, "cancelled": 1}

    # 1. which phase fails most often
    assert report["failures_by_phase"][0] == {"phase": "execute", "failures": 1}

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
    assert overran_in_large, "the large project makes at least one module overrun"
    assert overran_in_large <= overrunning
    for row in report["modules"]:
        assert row["runs"] == 4, row
        assert row["expected_ms"] > 0

    # 3. why jobs failed
    groups = report["failed_jobs_by_group"]
    assert {group: row["count"] for group, row in groups.items()} == {"module logic": 1, "cancelled": 1}
    failed = jobs_by_project(demo, "--status", "failed")
    assert list(failed) == ["broken-manifest"]
    assert groups["module logic"]["jobs"] == [failed["broken-manifest"]["id"]]

    # 4. time in each phase
    phases = {row["phase"]: row for row in report["time_in_phase"]}
    for phase in ("create", "queued", "execute", "finalize"):
        assert phases[phase]["count"] == 4, phase
        assert 0 <= phases[phase]["p50_ms"] <= phases[phase]["max_ms"]


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
