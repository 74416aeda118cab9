"""Helpers of the command-line tests (not tests): the ``orchestrator`` command in real
subprocesses, a test plugin installed through a real entry point, worker processes,
and waiting on conditions with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ORCHESTRATOR = [sys.executable, "-m", "orchestrator"]

PLUGIN_SOURCE = '''\
"""Analysis modules with known behaviour, for the CLI tests (loaded by entry point)."""

import os
import pathlib
import subprocess
import sys

import anyio

from orchestrator import BaseModule, ModuleError


def _started(context):
    """Write the file the option ``started_file`` names (a test waits for it: the module runs)."""
    if "started_file" in context.options:
        pathlib.Path(context.options["started_file"]).write_text("started")
    if "chatter" in context.options:  # what a careless module writes to stdout, every way
        print("chatter from print", context.options["chatter"])
        if context.options["chatter"] == "print-only":
            return
        sys.stdout.buffer.write(b"\\x1b[31m binary \\x00\\n")
        os.write(1, b"chatter from the file descriptor\\n")
        subprocess.run([sys.executable, "-c", "print('chatter from a child process')"], check=True)


class Echo(BaseModule):
    name = "echo"
    expected_runtime = 5.0
    timeout = 30.0
    description = "returns its options"

    async def run(self, context):
        _started(context)
        return {"options": dict(context.options)}


class Slow(BaseModule):
    name = "slow"
    # Long enough that a run of 0 s never overruns it on a loaded machine (a 50 ms budget
    # did: one stall of the process and a run that should be on time was not).
    expected_runtime = 1.0
    timeout = 60.0
    description = "sleeps options['seconds'], or until the file options['until_file'] exists"

    async def run(self, context):
        _started(context)
        if "until_file" in context.options:
            gate = pathlib.Path(context.options["until_file"])
            while not gate.exists():
                await anyio.sleep(0.02)
            return {"slept": "until_file"}
        await anyio.sleep(float(context.options.get("seconds", 0)))
        return {"slept": float(context.options.get("seconds", 0))}


class Boom(BaseModule):
    name = "boom"
    expected_runtime = 5.0
    timeout = 30.0
    description = "fails with a module error"

    async def run(self, context):
        raise ModuleError("boom: the input is bad", module=self.name)


class Panic(BaseModule):
    name = "panic"
    expected_runtime = 5.0
    timeout = 30.0
    description = "raises an unexpected exception"

    async def run(self, context):
        raise RuntimeError("kaboom")


class Stubborn(BaseModule):
    name = "stubborn"
    expected_runtime = 5.0
    timeout = 120.0
    description = "ignores cancellation for a minute"

    async def run(self, context):
        with anyio.CancelScope(shield=True):
            await anyio.sleep(60)
        return {}


class Deaf(BaseModule):
    name = "deaf"
    expected_runtime = 0.1
    timeout = 0.3
    description = "ignores every cancellation, even the one asyncio sends at exit"

    async def run(self, context):
        _started(context)
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(600)
            except BaseException:
                pass


class Hang(BaseModule):
    name = "hang"
    expected_runtime = 0.1
    timeout = 0.3
    description = "never finishes in time"

    async def run(self, context):
        await anyio.sleep(30)
        return {}
'''

GHOST_SOURCE = """\
from orchestrator import BaseModule


class Ghost(BaseModule):
    name = "ghost"
    description = "installed where jobs are submitted, not where they run"

    async def run(self, context):
        return {}
"""


def _install(root: Path, package: str, source: str, entry_points: Mapping[str, str]) -> Path:
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text(source)
    dist_info = root / f"{package}-0.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[orchestrator.modules]\n{lines}")
    return root


def write_plugin(root: Path) -> Path:
    """The test modules (echo, slow, boom, panic, hang, stubborn, deaf) as an installed distribution."""
    names = {"echo": "Echo", "slow": "Slow", "boom": "Boom", "panic": "Panic", "hang": "Hang", "stubborn": "Stubborn"}
    names["deaf"] = "Deaf"
    return _install(root, "cli_test_modules", PLUGIN_SOURCE, {n: f"cli_test_modules:{c}" for n, c in names.items()})


def write_ghost_plugin(root: Path) -> Path:
    """A module only some processes have."""
    return _install(root, "cli_ghost_module", GHOST_SOURCE, {"ghost": "cli_ghost_module:Ghost"})


def write_broken_plugin(root: Path) -> Path:
    """An entry point whose target does not exist: loading it fails."""
    return _install(root, "cli_broken_module", "", {"broken": "cli_broken_module:DoesNotExist"})


@dataclass
class Env:
    """An isolated environment for ``orchestrator`` subprocesses."""

    cwd: Path
    data_dir: Path
    plugins: list[Path] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    def environ(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORCHESTRATOR_"))}
        paths = [str(p) for p in self.plugins] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update({"ORCHESTRATOR_DATA_DIR": str(self.data_dir), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra)
        env.update(more)
        return env

    def run(
        self, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ORCHESTRATOR, *args],
            cwd=self.cwd,
            env=self.environ(**(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        done = self.run(*args, "--json", env=env)
        assert done.returncode in (0, 1, 3), (args, done.returncode, done.stderr[-3000:])
        return json.loads(done.stdout)

    @contextlib.contextmanager
    def worker(self, *args: str, env: Mapping[str, str] | None = None, log: Path | None = None) -> Iterator[Proc]:
        """A ``worker`` subprocess, started and ready; SIGTERM (then SIGKILL) at exit."""
        log = log or self.cwd / f"worker-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*ORCHESTRATOR, "--log-format", "json", "worker", *args],
                cwd=self.cwd,
                env=self.environ(**{"ORCHESTRATOR_POLL_SECONDS": "0.1", **(env or {})}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(popen, log)
        try:
            wait_for(lambda: "worker started" in proc.output() or popen.poll() is not None, what="worker start")
            assert popen.poll() is None, proc.output()
            yield proc
        finally:
            proc.stop()


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


def wait_for(check: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


def job_row(database: Path, job_id: str) -> dict[str, Any] | None:
    """A job's row read straight from the SQLite file (read-only, no CLI start-up cost)."""
    if not database.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single stderr line of a refused command (and no traceback)."""
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("orchestrator: error: "), lines[0]
    assert "Traceback" not in done.stderr
    return lines[0].removeprefix("orchestrator: error: ")
