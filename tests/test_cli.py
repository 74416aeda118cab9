"""The CLI end to end, in subprocesses, on the embedded default (real SQLite files)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import Served, serve_env

from orchestrator.cli.views import load_spans

ORCHESTRATOR = [sys.executable, "-m", "orchestrator"]


def cli(
    data_dir: Path, *args: str, timeout: float = 120, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    environ.update({"ORCHESTRATOR_DATA_DIR": str(data_dir), "NO_COLOR": "1", **env})
    return subprocess.run(
        [*ORCHESTRATOR, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        check=False,
        cwd=cwd or data_dir.parent,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("# TODO: more\nVALUE = 1\n")
    (root / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["anyio>=4"]\n')
    return root


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_demo_exits_zero_and_shows_every_kind_of_outcome(tmp_path: Path) -> None:
    result = cli(tmp_path / "data", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".orchestrator-demo" / "orchestrator.db").is_file()
    assert not (tmp_path / "data").exists()
    out = result.stdout
    for expected in ("completed", "failed", "cancelled", "overrun", "malformed manifest", "report"):
        assert expected in out, expected
    assert "Traceback" not in result.stderr


FAST_DEMO = """\
import functools, sys
from orchestrator.cli import demo, main as cli

# Projects so small that every job is done in a few milliseconds: a cancellation that
# waits for the job to have run a while (or for a progress poll to see it) comes too late.
demo.write_sample_projects = functools.partial(demo.write_sample_projects, large_files=1)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_demo_cancels_its_job_while_running_however_fast_it_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    done = subprocess.run(
        [sys.executable, "-c", FAST_DEMO, "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "NO_COLOR": "1"},
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    listed = cli(tmp_path / "demo", "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    by_project = {job["project_id"]: job for job in json.loads(listed.stdout)}
    nightly = by_project["nightly-batch"]
    assert (nightly["status"], nightly["reason"]) == ("cancelled", "cancelled by the demo while running")
    assert nightly["started_at"] is not None, "cancelled while running, not while queued"
    assert nightly["cancel_requested_by"] == "demo"
    events = cli(tmp_path / "demo", "events", nightly["id"], "--json")
    assert events.returncode == 0, events.stderr
    path = [(e["status_from"], e["status_to"]) for e in json.loads(events.stdout)]
    assert path[-2:] == [("running", "running"), ("running", "cancelled")], path
    assert {job["status"] for job in by_project.values()} == {"completed", "failed", "cancelled"}


def test_run_completes_a_job_and_prints_it_as_json(tmp_path: Path, project: Path) -> None:
    result = cli(tmp_path / "data", "run", "--source", str(project), "--project-id", "acme", "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert job["project_id"] == "acme"
    assert {r["module"] for r in job["results"]} == {"dependencies", "inventory", "python_syntax", "secrets", "todos"}
    assert all(r["outcome"] == "ok" for r in job["results"])


def test_run_exits_nonzero_when_the_job_fails(tmp_path: Path, project: Path) -> None:
    (project / "package.json").write_text("{ not json")
    result = cli(tmp_path / "data", "run", "--source", str(project), "--modules", "dependencies", "--json")
    assert result.returncode == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "failed"
    assert job["error_category"] == "module"
    assert "malformed manifest" in job["reason"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--source", "{project}", "--modules", "nope"], "unknown module 'nope'"),
        (["run", "--source", "{project}", "--modules", "todos,todos"], "more than once"),
        (["submit", "--source", "/definitely/not/here"], "does not exist"),
        (["submit", "--source", "{project}", "--project-id", "bad id!"], "--project-id: use letters"),
        (["submit", "--source", "{project}", "--modules", ",".join(["todos"] * 100)], "modules"),
        (["status", "0000-unknown"], "no job with id"),
        (["events", "0000-unknown"], "no job with id"),
        (["cancel", "0000-unknown"], "no job with id"),
        (["trace", "0000-unknown"], "no job '0000-unknown' in the SQLite database"),
        (["jobs", "--status", "weird"], "invalid choice"),
        (["jobs", "--since", "1x"], "--since '1x': expected a duration (30m, 6h, 2d) or an ISO time"),
        (["webhooks", "deliveries", "--before", "0"], "--before: 0 is not between 1 and 9223372036854775807"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(tmp_path: Path, project: Path, args: list[str], fragment: str) -> None:
    result = cli(tmp_path / "data", *[a.replace("{project}", str(project)) for a in args])
    assert fragment in _one_line_error(result)


def test_cancelling_a_finished_job_is_refused_with_exit_2(tmp_path: Path, project: Path) -> None:
    data = tmp_path / "data"
    done = json.loads(cli(data, "run", "--source", str(project), "--modules", "todos", "--json").stdout)
    line = _one_line_error(cli(data, "cancel", done["id"]))
    assert line.startswith(f"orchestrator: error: job {done['id']} already completed at ")
    assert line.endswith(": nothing to cancel")


def test_submitted_job_can_be_inspected_and_cancelled_while_queued(tmp_path: Path, project: Path) -> None:
    data = tmp_path / "data"
    submitted = cli(data, "submit", "--source", str(project))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    status = json.loads(cli(data, "status", job_id, "--json").stdout)
    assert status["status"] == "queued"
    assert cli(data, "cancel", job_id).returncode == 0
    events = json.loads(cli(data, "events", job_id, "--json").stdout)
    assert [(e["status_from"], e["status_to"]) for e in events] == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "cancelled"),
    ]
    listed = json.loads(cli(data, "jobs", "--status", "cancelled", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]


def test_modules_lists_the_builtin_modules(tmp_path: Path) -> None:
    rows = json.loads(cli(tmp_path / "data", "modules", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {"dependencies", "inventory", "python_syntax", "secrets", "todos"} <= names
    assert all(r["expected_runtime_s"] > 0 and r["timeout_s"] >= r["expected_runtime_s"] for r in rows)


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_job_submitted_by_one_process_and_run_by_a_worker_in_another_forms_one_trace(
    tmp_path: Path, project: Path
) -> None:
    data = tmp_path / "data"
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    submitted = cli(data, "submit", "--source", str(project), "--traceparent", traceparent, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    environ.update({"ORCHESTRATOR_DATA_DIR": str(data), "ORCHESTRATOR_POLL_SECONDS": "0.1"})
    worker = subprocess.Popen(
        [*ORCHESTRATOR, "--log-format", "json", "worker"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: json.loads(cli(data, "status", job["id"], "--json").stdout)["status"] == "completed")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "worker stopped" in stderr

    spans = [s for s in load_spans(data / "telemetry") if s.trace_id == job["trace_id"]]
    roots = [s for s in spans if s.name == "job"]
    assert len(roots) == 1
    root = roots[0]
    assert root.span_id == job["root_span_id"]
    assert root.parent_id == ""
    created_ns = round(dt.datetime.fromisoformat(job["created_at"]).timestamp() * 1e6) * 1000
    assert abs(root.start_ns - created_ns) < 1_000_000  # created_at is printed with ms precision
    names = {s.name for s in spans}
    assert {"job.create", "job.queued", "job.execute", "job.finalize", "job.module"} <= names
    # phase spans from both processes parent on the root
    assert all(s.parent_id == root.span_id for s in spans if s.name in ("job.create", "job.queued", "job.execute"))


def test_webhook_subscriptions_are_managed_from_the_cli_and_never_show_the_secret(
    tmp_path: Path, project: Path
) -> None:
    data = tmp_path / "data"
    secret = "cli-webhook-secret-0123456789"
    added = cli(
        data,
        "webhooks",
        "add",
        "--project-id",
        "acme",
        "--url",
        "https://hooks.example.com/x",
        "--secret-env",
        "HOOK_SECRET",
        "--events",
        "job.lifecycle.complete",
        HOOK_SECRET=secret,
    )
    assert added.returncode == 0, added.stderr
    subscription_id = added.stdout.strip()

    listed = cli(data, "webhooks", "list", "--json")
    [shown] = json.loads(listed.stdout)
    assert {k: shown[k] for k in ("id", "project_id", "events")} == {
        "id": subscription_id,
        "project_id": "acme",
        "events": ["job.lifecycle.complete"],
    }
    assert shown["url"].startswith("https://hooks.example.com/")  # the path may be a secret: not shown whole
    done = json.loads(cli(data, "run", "--source", str(project), "--project-id", "acme", "--json").stdout)
    deliveries = json.loads(cli(data, "webhooks", "deliveries", "--job-id", done["id"], "--json").stdout)
    assert [(d["event"], d["status"]) for d in deliveries] == [("job.lifecycle.complete", "pending")]
    for output in (added, listed):
        assert secret not in output.stdout + output.stderr

    assert cli(data, "webhooks", "remove", subscription_id).returncode == 0
    assert json.loads(cli(data, "webhooks", "list", "--json").stdout) == []
    assert "no webhook subscription" in _one_line_error(cli(data, "webhooks", "remove", subscription_id))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["webhooks", "add", "--project-id", "acme", "--url", "ftp://x/y", "--secret", "s" * 20], "http and https"),
        (["webhooks", "add", "--project-id", "acme", "--url", "https://x/y", "--secret", "short"], "16 characters"),
        (
            ["webhooks", "add", "--project-id", "acme", "--url", "https://x/y", "--secret", "s" * 20, "--events", "x"],
            "unknown x",
        ),
    ],
)
def test_bad_webhook_input_prints_one_line_and_exits_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert fragment in _one_line_error(cli(tmp_path / "data", *args))


TERMINATED_WHEN_READY = """\
import logging, os, signal, sys
from orchestrator.cli.main import main

announced = logging.Logger.handle

def handle(self, record):
    # SIGTERM the moment the process announces it started (what a supervisor or the
    # fault suite waits for before it may stop the process).
    announced(self, record)
    if getattr(record, "otel.event.name", None) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGTERM)

logging.Logger.handle = handle
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("event", "command"),
    [("worker.start", ["worker"]), ("operation.start", ["serve", "--port", "0"])],
    ids=["worker", "serve"],
)
def test_sigterm_as_soon_as_started_is_a_graceful_stop(tmp_path: Path, event: str, command: list[str]) -> None:
    """A process that has said it started handles SIGTERM as a stop request: exit 0 after
    its shutdown, not "interrupted" (130) with its loops never started (CI's chaos run)."""
    data = tmp_path / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
    environ.update({"ORCHESTRATOR_DATA_DIR": str(data), "NO_COLOR": "1", "ORCHESTRATOR_LOG_FORMAT": "json"})
    done = subprocess.run(
        [sys.executable, "-c", TERMINATED_WHEN_READY, event, *command],
        env=environ,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "interrupted" not in done.stderr
    assert "never awaited" not in done.stderr
    if command == ["worker"]:
        assert "SIGTERM: finishing running jobs" in done.stderr
        assert '"event": "worker.stop"' in done.stderr


def test_serve_on_a_port_in_use_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*ORCHESTRATOR, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=serve_env(data),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"orchestrator: error: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another serve, or another program, uses it)\n"
    )
    assert not data.exists()  # refused before the store was opened or migrated


def test_serve_on_port_0_says_which_port_it_took(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log_path = data / "serve.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [*ORCHESTRATOR, "serve", "--host", "127.0.0.1", "--port", "0", "--workers-in-process", "0"],
            env=serve_env(data),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Served(popen, 0, log_path, data)
    try:
        _wait_for(lambda: "serving on http://127.0.0.1:" in served.output(), timeout=60)
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+) ", served.output())
        assert match is not None, served.output()
        served.port = int(match.group(1))
        assert served.port != 0
        _wait_for(lambda: _answers(served), timeout=60)
    finally:
        code = served.stop()
    assert code == 0, served.output()[-3000:]


def _answers(served: Served) -> bool:
    try:
        with served.client() as client:
            return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_the_listening_socket_is_not_inherited_by_child_processes() -> None:
    # serve's pool workers (child processes) must never hold its port after it exits.
    from orchestrator.api.server import listen

    with listen("127.0.0.1", 0) as sock:
        assert sock.get_inheritable() is False
        child = subprocess.run(
            [sys.executable, "-c", f"import os; os.fstat({sock.fileno()})"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            close_fds=False,
        )
    assert child.returncode == 1
    assert "Bad file descriptor" in child.stderr
