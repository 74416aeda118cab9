"""The real wire format: ``orchestrator demo`` in a subprocess exporting to local OTLP
receivers (HTTP/protobuf and gRPC), and a demo whose collector is down."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, Received, attributes
from telemetry_helpers import CliRun, run_orchestrator

from otel.vocabulary import Attr, LifecycleEvent, Metric, SpanName

pytestmark = pytest.mark.timeout(180)

DEMO_PROJECTS = {"clean-service", "broken-manifest", "large-monorepo", "nightly-batch"}
#: Metrics every demo run records, whatever the timing.
DEMO_METRICS = {
    spec.name
    for spec in (
        Metric.TRANSITIONS,
        Metric.PHASE_DURATION,
        Metric.JOB_DURATION,
        Metric.MODULE_DURATION,
        Metric.MODULE_EXPECTED,
        Metric.FAILURES,
        Metric.QUEUE_WAIT,
        Metric.ACTIVE_JOBS,
    )
}
LIFECYCLE_EVENTS = frozenset(str(e) for e in LifecycleEvent)


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "OTEL_METRIC_EXPORT_INTERVAL": "1000", **extra}


def assert_ok(run: CliRun) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\nstderr:\n{run.stderr[-4000:]}"
    assert "Traceback" not in run.stderr


def root_spans(received: Received) -> dict[bytes, dict[str, object]]:
    """trace id -> attributes of each root ``job`` span."""
    roots: dict[bytes, dict[str, object]] = {}
    for _, span in received.spans():
        if span.name == SpanName.JOB and not span.parent_span_id:
            assert span.trace_id not in roots, "one root span per trace"
            roots[span.trace_id] = attributes(span.attributes)
    return roots


def check_demo_export(received: Received, *, all_lifecycle_logs: bool) -> None:
    assert received.traces, "no traces arrived"
    assert received.logs, "no logs arrived"
    assert received.metrics, "no metrics arrived"
    assert received.rejected == []

    roots = root_spans(received)
    assert len(roots) == 4, "one root job span per demo job"
    assert {r[Attr.PROJECT_ID] for r in roots.values()} == DEMO_PROJECTS
    assert sorted(str(r[Attr.STATUS]) for r in roots.values()) == ["cancelled", "completed", "completed", "failed"]
    assert {span.trace_id for _, span in received.spans()} == set(roots), "every span is in a job's trace"

    lifecycle_trace_ids = {
        record.trace_id for _, record in received.log_records() if record.event_name in LIFECYCLE_EVENTS
    }
    if all_lifecycle_logs:
        assert lifecycle_trace_ids == set(roots)
    else:  # at the demo's default level only the failed and cancelled jobs log lifecycle warnings
        assert lifecycle_trace_ids
        assert lifecycle_trace_ids <= set(roots)

    resources = [r for r, _ in received.spans()] + [r for r, _ in received.log_records()]
    resources += list(received.metric_resources())
    for resource in resources:
        assert attributes(resource.attributes)["service.name"] == "orchestrator"

    assert received.metric_names() >= DEMO_METRICS


def test_demo_exports_over_otlp_http(tmp_path: Path) -> None:
    with OtlpHttpReceiver() as receiver:
        run = run_orchestrator(
            # info: the lifecycle records of every job, not only the failed one's, are logged
            "--log-level",
            "info",
            "demo",
            cwd=tmp_path,
            env=demo_env(
                tmp_path,
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
            ),
        )
    assert_ok(run)
    assert receiver.received.content_encodings == {"gzip"}
    check_demo_export(receiver.received, all_lifecycle_logs=True)
    assert not (tmp_path / "data" / "telemetry").exists(), "OTLP replaces the embedded files"


def test_demo_exports_over_otlp_grpc(tmp_path: Path) -> None:
    with OtlpGrpcReceiver() as receiver:
        run = run_orchestrator(
            "demo",
            cwd=tmp_path,
            env=demo_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"),
        )
    assert_ok(run)
    check_demo_export(receiver.received, all_lifecycle_logs=False)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_collector_down_does_not_slow_or_break_the_demo(tmp_path: Path) -> None:
    (tmp_path / "down").mkdir()
    (tmp_path / "off").mkdir()
    down = run_orchestrator(
        "demo",
        cwd=tmp_path / "down",
        env=demo_env(
            tmp_path / "down",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        ),
    )
    disabled = run_orchestrator("demo", cwd=tmp_path / "off", env=demo_env(tmp_path / "off", OTEL_SDK_DISABLED="true"))
    assert_ok(disabled)
    assert_ok(down)
    assert down.seconds < disabled.seconds + 15, f"collector down: {down.seconds:.1f} s vs {disabled.seconds:.1f} s"

    # Export failures are warned about at a limited rate (none at all when the exporters
    # are still retrying as the bounded shutdown gives up on them).
    export_lines = [line for line in down.stderr.splitlines() if "export" in line.lower()]
    assert len(export_lines) <= 6, "\n".join(export_lines)
    for line in export_lines:
        assert "telemetry.export_failed" in line, line
    assert not [line for line in disabled.stderr.splitlines() if "export" in line.lower()]
