"""``OTEL_*`` values OpenTelemetry would raise on: refused first, in one line naming the
variable (otel/environment.py), compared with what the SDK itself does on each value."""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk._logs import LogRecordLimits
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from otel.environment import EXPORT_QUEUE_SIZE, TelemetryConfigError, check_environment, export_queue_size

HUGE = "99999999999999999999"
VALUES = ("abc", "-1", "0", "5", " 7 ", "", "+3", "1_000", "3.5", "4096", "4097", HUGE)

LIMITS = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)


def _sdk_refuses(build: Callable[[], object], caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the SDK raises building ``build()``, or logs an error that it could not use
    a value (and falls back to its default)."""
    # The SDK's export loggers drop a message repeated within 20 s (DuplicateFilter).
    for name in ("opentelemetry.sdk._logs._internal.export", "opentelemetry.sdk.trace.export"):
        logging.getLogger(name).filters.clear()
    caplog.clear()
    try:
        with caplog.at_level(logging.ERROR):
            built = build()
    except (ValueError, OverflowError):
        return True
    shutdown = getattr(built, "shutdown", None)
    if shutdown is not None:
        shutdown()
    return any(r.levelno >= logging.ERROR for r in caplog.records)


def _ours_refuse(name: str, value: str) -> bool:
    caught: TelemetryConfigError | None = None
    try:
        check_environment({name: value})
    except TelemetryConfigError as exc:
        caught = exc
    if caught is None:
        return False
    assert caught.variable == name
    assert name in caught.message
    assert "\n" not in caught.message
    return True


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _span_under_limits() -> object:
    """A span with an event and a link under the environment's limits (a limit too large
    for the SDK's bounded lists fails only here, not in ``SpanLimits()``)."""
    limits = SpanLimits()
    tracer = TracerProvider(span_limits=limits, shutdown_on_exit=False).get_tracer("test")
    linked = tracer.start_span("linked")
    span = tracer.start_span("s", links=[Link(linked.get_span_context(), {"k": "v"})], attributes={"a": "b" * 10})
    span.add_event("e", {"k": "v"})
    span.end()
    return limits


@pytest.mark.parametrize("name", LIMITS)
def test_a_limit_is_refused_exactly_when_the_sdk_raises_on_it(
    name: str, clean_otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    build = (lambda: LogRecordLimits()) if "LOGRECORD" in name else _span_under_limits
    disagreements = []
    for value in VALUES:
        clean_otel_env.setenv(name, value)
        if _sdk_refuses(build, caplog) != _ours_refuse(name, value):
            disagreements.append(value)
    assert disagreements == []
    # Not vacuous: both refuse some values and accept others.
    assert _ours_refuse(name, "abc")
    assert _ours_refuse(name, "-1")
    assert not _ours_refuse(name, "5")


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("OTEL_BSP", lambda queue: BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=queue)),
        ("OTEL_BLRP", lambda queue: BatchLogRecordProcessor(InMemoryLogRecordExporter(), max_queue_size=queue)),
    ],
)
@pytest.mark.parametrize("suffix", ["SCHEDULE_DELAY", "MAX_EXPORT_BATCH_SIZE", "EXPORT_TIMEOUT", "MAX_QUEUE_SIZE"])
def test_a_batch_processor_value_is_refused_exactly_when_the_sdk_cannot_use_it(
    prefix: str,
    build: Callable[[int], object],
    suffix: str,
    clean_otel_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"{prefix}_{suffix}"
    disagreements = []
    # A huge delay: the SDK takes it and its export thread dies on its first wait (see the
    # test below), not something to start here.
    for value in [v for v in VALUES if not (suffix == "SCHEDULE_DELAY" and v == HUGE)]:
        clean_otel_env.setenv(name, value)
        # The queue as otel.setup gives it: the environment's, else ours (an explicit
        # queue length makes the SDK ignore OTEL_*_MAX_QUEUE_SIZE, so setup reads it).
        env = {name: value}
        queue = export_queue_size(env, prefix) or EXPORT_QUEUE_SIZE
        if suffix == "MAX_QUEUE_SIZE" and export_queue_size(env, prefix) is None:
            sdk = _sdk_refuses(functools.partial(build, None), caplog)  # the SDK reads the variable itself
        else:
            sdk = _sdk_refuses(functools.partial(build, queue), caplog)
        if sdk != _ours_refuse(name, value):
            disagreements.append(value)
    assert disagreements == []


def test_a_delay_the_export_thread_could_not_wait_for_is_refused() -> None:
    """The SDK takes it and its export thread dies on the first wait: refused first."""
    import threading

    too_long = str(int(threading.TIMEOUT_MAX * 1000) + 1000)
    with pytest.raises(OverflowError):
        threading.Event().wait(int(too_long) / 1000)
    with pytest.raises(TelemetryConfigError, match=r"OTEL_BLRP_SCHEDULE_DELAY.*too long to wait for"):
        check_environment({"OTEL_BLRP_SCHEDULE_DELAY": too_long})
    check_environment({"OTEL_BLRP_SCHEDULE_DELAY": str(int(threading.TIMEOUT_MAX * 1000) - 1000)})


def test_an_export_batch_larger_than_a_queue_from_the_environment_is_refused() -> None:
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"}
    with pytest.raises(TelemetryConfigError, match=r"OTEL_BSP_MAX_EXPORT_BATCH_SIZE='200'.*\(100 spans\)"):
        check_environment(env)
    check_environment({**env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"})
    # A queue smaller than the SDK's default batch, with no batch size given: the queue
    # is named (the variable the user set).
    with pytest.raises(TelemetryConfigError, match=r"OTEL_BLRP_MAX_QUEUE_SIZE='100': smaller than an export batch"):
        check_environment({"OTEL_BLRP_MAX_QUEUE_SIZE": "100"})


def test_the_exemplar_filter_is_refused_exactly_when_the_sdk_raises(
    clean_otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for value in ("trace_based", "always_on", "always_off", "Always_On", "bogus", " always_on"):
        clean_otel_env.setenv("OTEL_METRICS_EXEMPLAR_FILTER", value)
        sdk = _sdk_refuses(lambda: MeterProvider(shutdown_on_exit=False), caplog)
        assert sdk == _ours_refuse("OTEL_METRICS_EXEMPLAR_FILTER", value), value
    # Empty is unset (as the specification has it): setup gives the SDK the default filter
    # itself, where the SDK's own reading of the variable would refuse "".
    assert not _ours_refuse("OTEL_METRICS_EXEMPLAR_FILTER", "")


def test_propagators_are_refused_exactly_when_the_api_raises(clean_otel_env: pytest.MonkeyPatch) -> None:
    from opentelemetry import propagate

    for value in ("tracecontext,baggage", "none", "tracecontext, baggage", "bogus", "tracecontext,bogus",
                  "none,bogus", "bogus,none", "tracecontext,", "", "B3"):
        clean_otel_env.setenv("OTEL_PROPAGATORS", value)
        try:
            propagate._load_propagators()
            api = False
        except ValueError:
            api = True
        assert api == _ours_refuse("OTEL_PROPAGATORS", value), value


def test_providers_are_refused_exactly_when_the_api_cannot_load_them(clean_otel_env: pytest.MonkeyPatch) -> None:
    from opentelemetry.util._providers import _load_provider

    for name, kind in (("OTEL_PYTHON_METER_PROVIDER", "meter_provider"),
                       ("OTEL_PYTHON_TRACER_PROVIDER", "tracer_provider"),
                       ("OTEL_PYTHON_LOGGER_PROVIDER", "logger_provider")):
        for value in ("sdk_" + kind, "bogus", "", " sdk_" + kind):
            clean_otel_env.setenv(name, value)
            try:
                _load_provider(name, kind)
                api = False
            except Exception:
                api = True
            assert api == _ours_refuse(name, value), (name, value)
        clean_otel_env.delenv(name)  # (the SDK's providers load the others as they start)


def test_a_context_or_resource_detector_is_refused_exactly_when_the_sdk_cannot_load_it(
    clean_otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry import context
    from opentelemetry.sdk.resources import Resource

    for value in ("contextvars_context", "bogus", " contextvars_context"):
        clean_otel_env.setenv("OTEL_PYTHON_CONTEXT", value)
        sdk = _sdk_refuses(context._load_runtime_context, caplog)
        assert sdk == _ours_refuse("OTEL_PYTHON_CONTEXT", value), value
    clean_otel_env.delenv("OTEL_PYTHON_CONTEXT")
    for value in ("host,os", " host , process ", "*", "bogus", "host,bogus", ",,", ""):
        clean_otel_env.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", value)
        sdk = _sdk_refuses(Resource.create, caplog)
        assert sdk == _ours_refuse("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", value), value


def test_a_metric_interval_the_export_thread_could_not_wait_for_is_refused() -> None:
    import threading

    for value in ("15000", "0.5", "1e3", str(int(threading.TIMEOUT_MAX * 1000) - 1000)):
        check_environment({"OTEL_METRIC_EXPORT_INTERVAL": value})
    with pytest.raises(OverflowError):  # what the periodic reader's thread would meet
        threading.Event().wait(float(HUGE) / 1000)
    for value in ("abc", "nan", "inf", HUGE, "15s"):
        with pytest.raises(TelemetryConfigError, match=r"^OTEL_METRIC_EXPORT_INTERVAL=.*not a number of milliseconds"):
            check_environment({"OTEL_METRIC_EXPORT_INTERVAL": value})


def test_a_long_or_odd_value_is_quoted_on_one_bounded_line() -> None:
    with pytest.raises(TelemetryConfigError) as caught:
        check_environment({"OTEL_SPAN_EVENT_COUNT_LIMIT": "x\n\x1b[31m" * 1000})
    message = caught.value.message
    assert "\n" not in message
    assert "\x1b" not in message
    assert len(message) < 200
    assert message.startswith("OTEL_SPAN_EVENT_COUNT_LIMIT='x\\n\\x1b[31m")


def test_the_prometheus_port_is_checked_only_when_prometheus_is_asked_for() -> None:
    check_environment({"OTEL_EXPORTER_PROMETHEUS_PORT": "abc"})  # not used: no error
    for bad in ("abc", "65536", "-1"):
        with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_PROMETHEUS_PORT"):
            check_environment({"OTEL_METRICS_EXPORTER": "otlp,prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": bad})
    check_environment({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "9464"})


# -- the command line ------------------------------------------------------------------


def _cli(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "project").mkdir(exist_ok=True)
    (tmp_path / "project" / "a.py").write_text("x = 1\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    environ.update({"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--source", str(tmp_path / "project")],
        capture_output=True, text=True, timeout=120, env=environ, check=False, cwd=tmp_path,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        # read while the SDK is imported: a traceback through the import machinery before
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc", "a limit must be a non-negative integer"),
        ("OTEL_PROPAGATORS", "tracecontext,b3", "no propagator named 'b3' is installed"),
        # read while the providers are set up
        ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes", "not an exemplar filter"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1", "must be a positive integer"),
    ],
)
def test_the_command_line_refuses_the_value_in_one_line_and_writes_nothing(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    line = _one_line(_cli(tmp_path, **{name: value}))
    assert line.startswith(f"orchestrator: error: {name}={value!r}: {expected}")
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_a_taken_prometheus_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line(
            _cli(tmp_path, OTEL_METRICS_EXPORTER="prometheus", OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
                 OTEL_EXPORTER_PROMETHEUS_PORT=str(port))
        )
    assert line == (
        f"orchestrator: error: cannot serve Prometheus metrics on 127.0.0.1:{port} "
        "(OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT): Address already in use"
    )
