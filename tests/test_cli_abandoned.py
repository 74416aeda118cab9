"""A command that abandoned a module (it ignored its cancellation) must still exit, with
the code and the error line it would have had: asyncio cancels every task at exit and
waits for each, and such a module ignores that cancellation too.

Each case is a real ``python`` process running ``orchestrator.cli.main.main`` with a
command whose handler runs a job of a deaf module, then ends as the case says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import serve_env, start_serve
from cli_helpers import write_plugin

SCRIPT = '''
import sys
import tempfile
import time
from pathlib import Path

import anyio

import orchestrator.cli.commands as commands
import otel.setup
from orchestrator.bootstrap import open_app
from orchestrator.cli.main import main, print_json
from orchestrator.domain import InvalidRequest
from orchestrator.modules.base import BaseModule
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.usecases import JobControl

CASE = sys.argv[1]


class Deaf(BaseModule):
    name = "deaf"
    expected_runtime = 0.1
    timeout = 0.2

    async def run(self, context):
        if CASE == "ends at exit":  # ignores its timeout, not the cancellation at exit
            with anyio.CancelScope(shield=True):
                await anyio.sleep(600)
        while True:  # ignores every cancellation
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(600)
            except BaseException:
                pass


async def handler(ctx):
    source = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=source / "data", module_abandon_seconds=0.2)
    async with open_app(settings, registry=ModuleRegistry([Deaf()])) as app:
        await app.create.execute({"project_id": "p", "source": str(source), "modules": ["deaf"]})
        running = await app.workflow.claim("w", lease_seconds=30)
        final = await app.execute.execute(running, control=JobControl(), worker_id="w")
    if CASE == "invalid":
        raise InvalidRequest("bad input from the user")
    if CASE == "interrupted":
        raise KeyboardInterrupt
    print_json({"id": final.id, "status": final.status.value})
    return 0


if CASE == "ends at exit":
    shutdown = otel.setup.Telemetry.shutdown

    def slow_shutdown(self, timeout_s=5.0):
        time.sleep(3.0)  # longer than the exit guard's 2 s: it must be disarmed by then
        print("telemetry shut down", file=sys.stderr, flush=True)
        return shutdown(self, timeout_s=timeout_s)

    otel.setup.Telemetry.shutdown = slow_shutdown

commands.status = handler
sys.exit(main(["status", "x"]))
'''


def run_case(tmp_path: Path, case: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "command.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), case],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("case", "code", "error"),
    [("invalid", 2, "error: bad input from the user; "), ("interrupted", 130, "error: interrupted; ")],
)
def test_a_failed_command_keeps_its_exit_code_and_error_line(tmp_path: Path, case: str, code: int, error: str) -> None:
    done = run_case(tmp_path, case)
    assert done.returncode == code, done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"orchestrator: {error}abandoned module still running (job "), done.stderr
    assert last.endswith(" module deaf): exiting without waiting for them"), done.stderr
    assert "Traceback" not in done.stderr


def test_the_result_is_written_when_stdout_is_a_buffered_pipe(tmp_path: Path) -> None:
    """os._exit drops what a buffer holds: the result is flushed before the guard is armed."""
    done = run_case(tmp_path, "result")
    assert done.returncode == 0, done.stderr
    assert '"status": "failed"' in done.stdout, (done.stdout, done.stderr)
    assert done.stderr.rstrip().endswith("exiting without waiting for them"), done.stderr


def test_a_module_ending_at_exit_lets_the_process_end_as_usual(tmp_path: Path) -> None:
    """Once the event loop is closed the guard is disarmed: a slow telemetry shutdown is
    not cut short, and nothing says the process left a module behind."""
    done = run_case(tmp_path, "ends at exit")
    assert done.returncode == 0, done.stderr
    assert '"status": "failed"' in done.stdout
    assert "telemetry shut down" in done.stderr
    assert "exiting without waiting" not in done.stderr, done.stderr


def test_serve_whose_worker_abandoned_its_limit_of_modules_exits_75(tmp_path: Path) -> None:
    """Past the limit of abandoned modules, serve's in-process worker stops and serve with
    it (EX_TEMPFAIL), for its supervisor to start a fresh process."""
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    env = serve_env(
        tmp_path / "data",
        source_roots=root,
        load_entry_points="true",
        module_abandon_seconds=0.3,
        max_abandoned_modules=1,
    )
    plugins = write_plugin(tmp_path / "plugins")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    served = start_serve(tmp_path / "data", "--workers-in-process", "1", env=env)
    try:
        with served.client() as client:
            job = {"project_id": "p", "source": str(root / "project"), "modules": ["deaf"]}
            created = client.post("/v1/jobs", json=job)
            assert created.status_code == 201, created.text
        code = served.popen.wait(timeout=60)
    finally:
        served.stop()
    output = served.output()
    assert code == 75, output[-3000:]
    assert '"event": "worker.recycle"' in output
    assert "abandoned module still running" in output  # and it did not wait for it
