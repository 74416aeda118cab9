"""A worker stops within its shutdown grace whatever a module does (issue 11's reproduction:
``source=/proc/kmsg`` left a module thread blocked in a read and SIGTERM was ignored).

A real ``python -m orchestrator worker`` process runs a third-party module, loaded through
a real entry point, that blocks forever in a read inside ``context.run_sync`` (a FIFO
nobody writes to: the same kind of read as /proc/kmsg, without touching the kernel log).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN = '''\
"""Modules that block forever in a read: through context.run_sync (the documented way)
and through a thread of their own (anyio.to_thread, a non-daemon thread)."""

import anyio


class Blocking:
    name = "blocking"
    version = "1.0.0"
    expected_runtime = 1.0
    timeout = 600.0
    description = "reads a FIFO nobody writes to (test module)"

    async def run(self, context):
        def read_forever():
            with open(context.source / "pipe", "rb") as pipe:
                return pipe.read()

        await context.run_sync(read_forever)
        return {}


class OwnThread(Blocking):
    name = "own_thread"

    async def run(self, context):
        def read_forever():
            with open(context.source / "pipe", "rb") as pipe:
                return pipe.read()

        await anyio.to_thread.run_sync(read_forever, abandon_on_cancel=True)
        return {}
'''

GRACE_SECONDS = 1.0
#: What the process may take after the grace: requeue the job, flush telemetry, exit.
EXIT_MARGIN_SECONDS = 5.0


def write_plugin(root: Path) -> Path:
    (root / "blocking_module.py").write_text(PLUGIN)
    dist_info = root / "blocking_module-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: blocking-module\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[orchestrator.modules]\nblocking = blocking_module:Blocking\nown_thread = blocking_module:OwnThread\n"
    )
    return root


def environment(data: Path, plugins: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OTEL_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(plugins), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "ORCHESTRATOR_DATA_DIR": str(data),
            "ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            "ORCHESTRATOR_POLL_SECONDS": "0.1",
            "ORCHESTRATOR_LOG_FORMAT": "json",
        }
    )
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def wait_for_reader(fifo: Path, deadline: float) -> int:
    """Open the FIFO for writing once a reader has it open (ENXIO until then); the
    returned descriptor is kept open so the reader never sees end-of-file."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the module never opened the FIFO")
        time.sleep(0.05)


@pytest.fixture
def worker_setup(tmp_path: Path) -> tuple[dict[str, str], Path]:
    source = tmp_path / "source"
    source.mkdir()
    os.mkfifo(source / "pipe")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    return environment(tmp_path / "data", write_plugin(plugins)), source


@pytest.mark.parametrize("module", ["blocking", "own_thread"])
def test_sigterm_stops_a_worker_whose_module_is_blocked_in_a_read(
    worker_setup: tuple[dict[str, str], Path], tmp_path: Path, module: str
) -> None:
    env, source = worker_setup
    submitted = cli(env, "submit", "--source", str(source), "--project-id", "p", "--modules", module, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    writer = -1
    try:
        writer = wait_for_reader(source / "pipe", time.monotonic() + 60)
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=GRACE_SECONDS + EXIT_MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker still running {GRACE_SECONDS + EXIT_MARGIN_SECONDS} s after SIGTERM; log:\n"
                + log_path.read_text(errors="replace")[-3000:]
            ) from None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        if writer >= 0:
            os.close(writer)
    log = log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "worker stopped" in log
    if module == "own_thread":  # its non-daemon thread is left behind, and said so
        assert "leaving 1 blocked thread(s) behind at exit" in log
    status = json.loads(cli(env, "status", job_id, "--json").stdout)
    # The grace ran out, so the job went back to the queue for another worker.
    assert status["status"] == "queued", status
