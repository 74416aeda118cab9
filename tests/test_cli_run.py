"""``orchestrator run`` under the habits of real users: Ctrl-C, and a worker serving the
same store. Real processes, real signals, real stores."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import ORCHESTRATOR, Env, job_row, wait_for, write_plugin

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    return Env(cwd=tmp_path, data_dir=tmp_path / "data", plugins=[write_plugin(tmp_path / "plugin")])


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    for popen in _STARTED:
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=10)
        if popen.stdout is not None:
            popen.stdout.close()
    _STARTED.clear()


_STARTED: list[subprocess.Popen[str]] = []


def _spawn(env: Env, *args: str) -> subprocess.Popen[str]:
    """``orchestrator ARGS`` with its stdout and stderr piped here, killed after the test."""
    popen = subprocess.Popen(
        [*ORCHESTRATOR, *args],
        cwd=env.cwd,
        env=env.environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(popen)
    return popen


def _start_run(env: Env, *args: str) -> tuple[subprocess.Popen[str], Path]:
    stderr = env.cwd / "run.stderr"
    with stderr.open("w") as err:  # the child has its own descriptor
        popen = subprocess.Popen(
            [*ORCHESTRATOR, "run", "--source", str(env.cwd / "src"), "--json", *args],
            cwd=env.cwd,
            env=env.environ(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    _STARTED.append(popen)
    return popen, stderr


def _running_job(env: Env, popen: subprocess.Popen[str]) -> str:
    """The id of the job ``run`` created, once it is Running (read from the database)."""
    database = env.data_dir / "orchestrator.db"

    def running() -> str | None:
        assert popen.poll() is None, "run exited early"
        if not database.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
                row = db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchone()
        except sqlite3.OperationalError:
            return None  # the schema is being created
        return row[0] if row else None

    return wait_for(running, what="the job to run")


def test_what_modules_print_goes_to_stderr_and_run_json_stays_one_document(env: Env) -> None:
    """A module printing to stdout (print, raw bytes, the file descriptor, a child process)
    made `run --json` unparseable: stdout now carries the result alone."""
    src = str(env.cwd / "src")
    done = env.run("run", "--source", src, "--modules", "echo", "--option", "echo.chatter=hi", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["status"], job["results"][0]["summary"]["options"]) == ("completed", {"chatter": "hi"})
    for said in ("chatter from print hi", "binary", "chatter from the file descriptor", "chatter from a child process"):
        assert said in done.stderr
    # The reader of stderr gone (`run --json ... 2>&1 >out.json | head -1`): what modules
    # print is dropped, neither failing the module nor landing ahead of the result. (A
    # write to the file descriptor itself fails then, as any write to stderr would.)
    quiet = ["--modules", "echo", "--json", "--option", "echo.chatter=print-only"]
    with (env.cwd / "out.json").open("w") as out:
        gone = subprocess.Popen(
            [*ORCHESTRATOR, "run", "--source", src, *quiet],
            cwd=env.cwd,
            env={k: v for k, v in env.environ().items() if k != "PYTHONUNBUFFERED"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
        )
        assert gone.stderr is not None
        gone.stderr.close()
        assert gone.wait(timeout=120) == 0
    unbroken = json.loads((env.cwd / "out.json").read_text())
    assert (unbroken["status"], unbroken["results"][0]["outcome"]) == ("completed", "ok")
    # Without --json, the panel is the only thing on stdout too.
    shown = env.run("run", "--source", src, "--modules", "echo", "--option", "echo.chatter=x")
    assert shown.returncode == 0, shown.stderr
    assert "chatter" not in shown.stdout
    assert "completed" in shown.stdout


def test_ctrl_c_cancels_the_running_job_cleanly(env: Env) -> None:
    slow_started, echo_started = env.cwd / "slow.started", env.cwd / "echo.started"
    popen, stderr = _start_run(
        env,
        "--modules",
        "slow,echo",
        "--option",
        "slow.seconds=60",
        "--option",
        f"slow.started_file={slow_started}",
        "--option",
        f"echo.started_file={echo_started}",
    )
    job_id = _running_job(env, popen)
    # Running in the database comes before `run` holds the job and its modules start: the
    # interrupt waits for both modules (echo returns as it writes its file).
    wait_for(lambda: slow_started.is_file() and echo_started.is_file(), what="both modules to start")
    popen.send_signal(signal.SIGINT)
    stdout, _ = popen.communicate(timeout=60)
    assert popen.returncode == 130, stderr.read_text()
    job = json.loads(stdout)
    assert job["id"] == job_id
    assert job["status"] == "cancelled"
    assert job["reason"] == "interrupted (SIGINT) while running in `orchestrator run`"
    assert job["error_category"] == "cancelled"
    assert {r["module"]: r["outcome"] for r in job["results"]} == {"slow": "cancelled", "echo": "ok"}
    said = stderr.read_text()
    assert f"SIGINT: cancelling job {job_id}; press Ctrl-C again to exit at once" in said
    assert "Traceback" not in said
    row = job_row(env.data_dir / "orchestrator.db", job_id)
    assert row is not None
    assert (row["status"], row["lease_owner"]) == ("cancelled", None)
    # nothing left for a worker: it finds no job to run again
    events = env.json("events", job_id)
    assert [(e["status_from"], e["status_to"]) for e in events][-1] == ("running", "cancelled")


def test_a_second_ctrl_c_stops_a_worker_at_once_and_blames_no_module(env: Env) -> None:
    """`worker`'s first Ctrl-C finishes its jobs; the second used to raise KeyboardInterrupt
    in whatever module code ran (Python's handler was back), recorded as that module's
    panic: the job Failed. It exits at once now, the job left to lease-expiry recovery."""
    started = env.cwd / "started"
    submitted = env.run(
        "submit", "--source", str(env.cwd / "src"), "--modules", "slow", "--json",
        "--option", "slow.seconds=600", "--option", f"slow.started_file={started}",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    stderr = env.cwd / "worker.stderr"
    with stderr.open("w") as err:
        popen = subprocess.Popen(
            [*ORCHESTRATOR, "worker"],
            cwd=env.cwd,
            env=env.environ(ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS="300"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    _STARTED.append(popen)  # type: ignore[arg-type]
    wait_for(started.exists, what="the module to start")
    popen.send_signal(signal.SIGINT)
    wait_for(lambda: "again to exit at once" in stderr.read_text(), what="the first interrupt to be taken")
    popen.send_signal(signal.SIGINT)
    assert popen.wait(timeout=60) == 130
    said = stderr.read_text()
    assert said.rstrip().endswith(
        "orchestrator: SIGINT again: exiting at once; jobs still running stay Running until their leases expire, "
        "then a worker's reaper recovers them"
    ), said
    row = job_row(env.data_dir / "orchestrator.db", job_id)
    assert row is not None
    assert (row["status"], row["results"]) == ("running", "[]")  # no module blamed


def test_a_second_ctrl_c_exits_at_once_and_says_what_is_left(env: Env) -> None:
    popen, stderr = _start_run(env, "--modules", "stubborn")
    job_id = _running_job(env, popen)
    popen.send_signal(signal.SIGINT)
    wait_for(lambda: "press Ctrl-C again" in stderr.read_text(), what="the first interrupt to be taken")
    popen.send_signal(signal.SIGINT)
    popen.communicate(timeout=60)
    assert popen.returncode == 130
    said = stderr.read_text()
    assert said.rstrip().endswith(
        f"orchestrator: error: interrupted again: exiting at once; job {job_id} was being cancelled: if it had not "
        "ended yet, it stays Running until its lease expires (then a worker's reaper recovers it, or "
        "`orchestrator cancel` cancels it)"
    ), said
    row = job_row(env.data_dir / "orchestrator.db", job_id)
    assert row is not None
    assert row["status"] == "running"  # left to lease-expiry recovery, as the message says


def test_run_ends_a_job_whose_module_ignores_its_timeout_and_exits_without_waiting_for_it(env: Env) -> None:
    """A module that ignores every cancellation held its job Running, and `run` with it,
    for good: the job ends now (the module abandoned after the grace), and the process
    exits although the module still runs (asyncio waits for every task at exit)."""
    done = env.run(
        "run", "--source", str(env.cwd / "src"), "--modules", "deaf,echo", "--json",
        env={"ORCHESTRATOR_MODULE_ABANDON_SECONDS": "0.5"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    job = json.loads(done.stdout)
    assert (job["status"], job["error_category"]) == ("failed", "module_timeout")
    results = {r["module"]: r for r in job["results"]}
    assert results["deaf"]["outcome"] == "timeout"
    assert results["deaf"]["error"] == (
        "exceeded its 0.3 s timeout (it ignored the cancellation for 0.5 s and was abandoned, "
        "still running in the worker)"
    )
    assert results["echo"]["outcome"] == "ok"
    assert done.stderr.rstrip().endswith(
        f"orchestrator: abandoned module still running (job {job['id']} module deaf): "
        "exiting without waiting for them"
    ), done.stderr
    assert "Traceback" not in done.stderr
    row = job_row(env.data_dir / "orchestrator.db", job["id"])
    assert row is not None
    assert (row["status"], row["lease_owner"]) == ("failed", None)


def test_a_worker_that_abandoned_its_limit_of_modules_exits_75_for_its_supervisor(env: Env) -> None:
    """Abandoned modules keep their memory (and may spin a core): past the limit the worker
    stops claiming and exits EX_TEMPFAIL, for systemd or Docker to start a fresh one."""
    ids = []
    for _ in range(2):
        submitted = env.run("submit", "--source", str(env.cwd / "src"), "--modules", "deaf", "--json")
        assert submitted.returncode == 0, submitted.stderr
        ids.append(json.loads(submitted.stdout)["id"])
    done = env.run(
        "worker", "--concurrency", "1",
        env={"ORCHESTRATOR_MODULE_ABANDON_SECONDS": "0.3", "ORCHESTRATOR_MAX_ABANDONED_MODULES": "1"},
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 75, done.stderr[-3000:]
    assert "stopped: too many modules it abandoned still run (ORCHESTRATOR_MAX_ABANDONED_MODULES=1); exit 75" in (
        done.stderr
    ), done.stderr[-3000:]
    assert '"event": "worker.recycle"' in done.stderr
    rows = [job_row(env.data_dir / "orchestrator.db", job_id) for job_id in ids]
    assert [(row or {}).get("status") for row in rows] == ["failed", "queued"]  # the second for a fresh worker


def _read_pty(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_a_long_run_shows_progress_on_a_terminal_and_nothing_when_piped(env: Env) -> None:
    args = ["run", "--source", str(env.cwd / "src"), "--modules", "slow,inventory", "--option", "slow.seconds=3"]
    main, terminal = pty.openpty()
    popen = subprocess.Popen(
        [*ORCHESTRATOR, *args, "--json"],
        cwd=env.cwd,
        env=env.environ(TERM="xterm", COLUMNS="120"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    _STARTED.append(popen)
    os.close(terminal)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _read_pty(main))  # the terminal's control sequences
    stdout, _ = popen.communicate(timeout=60)
    assert popen.returncode == 0, shown
    assert json.loads(stdout)["status"] == "completed"  # stdout stays the result alone
    assert "modules 1/2 done" in shown, shown  # inventory done while slow still runs
    assert re.search(r"inventory\s+done\s+\d+/\d+ files", shown), shown

    piped = env.run(*args)
    assert piped.returncode == 0, piped.stderr
    assert "modules 1/2 done" not in piped.stderr
    assert "files" not in piped.stderr


# -- a worker serving the same store ------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_store(request: pytest.FixtureRequest, env: Env) -> Iterator[Env]:
    """``env`` on the SQLite file, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield env
        return
    from pg_helpers import fresh_database

    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        env.extra["ORCHESTRATOR_DATABASE_URL"] = url
        yield env


def test_run_keeps_its_job_when_a_fast_worker_serves_the_same_store(shared_store: Env) -> None:
    env = shared_store
    assert env.run("db", "upgrade").returncode == 0  # the worker and the runs do not race to migrate
    fast = {"ORCHESTRATOR_POLL_SECONDS": "0.01"}
    with env.worker(env=fast) as worker:
        for _ in range(5):
            popen = _spawn(env, "run", "--source", str(env.cwd / "src"), "--modules", "echo", "--json")
            stdout, stderr = popen.communicate(timeout=120)
            assert popen.returncode == 0, stderr
            assert "Traceback" not in stderr
            assert "claimed by worker" not in stderr
            job = json.loads(stdout)
            assert job["status"] == "completed"
            history = env.json("events", job["id"])
            assert [(e["status_from"], e["status_to"]) for e in history] == [
                (None, "pending"),
                ("pending", "queued"),
                ("queued", "running"),
                ("running", "completed"),
            ]
            runners = {e["worker_id"] for e in history if e["status_from"] in ("queued", "running")}
            assert len(runners) == 1, runners
            [runner] = runners
            assert f":{popen.pid}:" in runner  # run's own worker, never the other one
            assert f":{worker.pid}:" not in runner


def test_a_refused_run_is_one_line_on_either_store(shared_store: Env) -> None:
    """A source the use case refuses ends run before its worker starts: one line, and no
    warning of a query cut short (PostgreSQL's driver logged two before)."""
    env = shared_store
    for source, message in (
        (env.cwd / "missing", f"orchestrator: error: --source: {env.cwd / 'missing'} does not exist"),
        (
            Path("/proc"),
            "orchestrator: error: --source: /proc is on a pseudo-filesystem (/proc, /sys, /dev): "
            "not something to analyse",
        ),
    ):
        done = env.run("run", "--source", str(source))
        assert (done.returncode, done.stderr.splitlines()) == (2, [message]), done.stderr
        assert done.stdout == ""


# -- readers that go away, interrupts at the edges ----------------------------------------


def test_run_whose_stderr_reader_goes_away_still_finishes_its_job(env: Env) -> None:
    # `orchestrator run ... 2>&1 | head -1`: the reader leaves after the first note on
    # stderr; the job must not be abandoned Running (for a worker to run it again).
    popen = _spawn(env, "run", "--source", str(env.cwd / "src"), "--modules", "slow", "--option", "slow.seconds=1")
    assert popen.stderr is not None
    popen.stderr.close()  # before the first note ("project id ...") is written
    stdout, _ = popen.communicate(timeout=120)
    first = stdout.splitlines()[0].split()
    assert (first[0], first[1]) == ("src", "completed"), stdout
    assert popen.returncode == 0, stdout
    row = job_row(env.data_dir / "orchestrator.db", first[2])
    assert row is not None
    assert (row["status"], row["lease_owner"]) == ("completed", None)


@pytest.mark.parametrize("command", [["status", "{job}"], ["trace", "{job}"], ["report"], ["run", "{source}"]])
def test_rendered_output_into_a_closed_pipe_stops_quietly_with_141(env: Env, command: list[str]) -> None:
    job = env.json("run", "--source", str(env.cwd / "src"), "--modules", "echo")["id"]
    args = [a.format(job=job, source="--source") for a in command]
    if command[0] == "run":
        args += [str(env.cwd / "src"), "--modules", "echo"]
    popen = _spawn(env, *args)
    assert popen.stdout is not None
    popen.stdout.close()  # `| head -0`: the reader is gone before anything is written
    _, stderr = popen.communicate(timeout=120)
    assert "Traceback" not in stderr
    assert popen.returncode == 141, stderr  # 128 + SIGPIPE, not 1 (a failed job's status)


def test_ctrl_c_as_the_job_finishes_is_not_a_failed_cancel(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # SIGINT arriving between the job's terminal transition and the end of `run`: the
    # command asks to cancel a job that has just completed.
    import anyio

    from orchestrator.bootstrap import open_app
    from orchestrator.cli import render
    from orchestrator.cli.run import cancel_here
    from orchestrator.settings import Settings

    job = env.json("run", "--source", str(env.cwd / "src"), "--modules", "echo")
    assert job["status"] == "completed"

    async def interrupt_late() -> str:
        async with open_app(Settings(data_dir=env.data_dir)) as app:
            worker = app.worker(concurrency=1)
            with render.err_console.capture() as said:
                await cancel_here(app, worker, job["id"], "interrupted (SIGINT) while running in `orchestrator run`")
            return said.get()

    said = anyio.run(interrupt_late)
    assert said.strip() == f"job {job['id']} already completed at {job['finished_at']}: nothing to cancel", said
    assert "cannot go from" not in caplog.text
    row = job_row(env.data_dir / "orchestrator.db", job["id"])
    assert row is not None
    assert (row["status"], row["reason"]) == ("completed", job["reason"])


STARTING_INTERRUPT = """\
import os, signal, sys
from orchestrator.cli import main as cli

build_parser = cli.build_parser

def interrupted_while_starting():
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the command line is being read
    return build_parser()

cli.build_parser = interrupted_while_starting
sys.exit(cli.main(sys.argv[1:]))
"""


def _as_in_a_terminal() -> None:
    # Ctrl-C as a terminal delivers it: a suite started in the background by a shell
    # (``make test &``, CI runners) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(env: Env, script: str) -> None:
    """``script`` (which interrupts itself) running the ``jobs`` command: one line, 130."""
    done = subprocess.run(
        [sys.executable, "-c", script, "jobs"],
        cwd=env.cwd,
        env=env.environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_as_in_a_terminal,
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, "orchestrator: error: interrupted\n", "")


def test_ctrl_c_while_the_command_starts_is_one_line(env: Env) -> None:
    _interrupted(env, STARTING_INTERRUPT)


IMPORT_INTERRUPT = """\
import os, signal, sys
from importlib.metadata import entry_points

class CtrlCDuringImport:
    # Ctrl-C while Python imports the program (its first moment, before any command runs).
    def find_spec(self, name, path=None, target=None):
        if name == "orchestrator.cli.main":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCDuringImport())
[script] = entry_points(group="console_scripts", name="orchestrator")
sys.exit(script.load()())
"""


def test_ctrl_c_while_python_imports_the_program_is_one_line(env: Env) -> None:
    """The installed console script (its entry point, as pip wrote it) with a Ctrl-C as it
    imports the command line: one line and 130, not the import machinery's traceback."""
    _interrupted(env, IMPORT_INTERRUPT)


def test_run_whose_job_cannot_be_recorded_says_so_and_exits_instead_of_waiting(env: Env) -> None:
    """The job's outcome cannot be written (another process holds SQLite's write lock for
    good; a full disk fails the same way): the worker gives the job up to lease-expiry
    recovery, and `run` says so and exits, instead of waiting for an end that this
    process will never write."""
    started, gate = env.cwd / "slow.started", env.cwd / "gate"
    env.extra["ORCHESTRATOR_LEASE_SECONDS"] = "3"  # how long the final write is retried
    popen, stderr = _start_run(
        env, "--modules", "slow", "--option", f"slow.started_file={started}", "--option", f"slow.until_file={gate}"
    )
    job_id = _running_job(env, popen)
    wait_for(started.is_file, what="the module to start")
    holder = sqlite3.connect(env.data_dir / "orchestrator.db", isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the end of the test
        gate.write_text("go")  # the module ends; its job's final write waits on the lock
        _, _ = popen.communicate(timeout=120)
        said = stderr.read_text()
        assert popen.returncode == 1, said
        last = said.strip().splitlines()[-1]
        expected = f"orchestrator: error: job {job_id} could not be finished here: the sqlite store at "
        assert last.startswith(expected), last
        assert ": database is locked (error id " in last, last
        assert last.endswith(
            "It stays running until its lease runs out, then a worker recovers it (`orchestrator worker`), "
            f"or `orchestrator cancel {job_id}` cancels it"
        ), last
        assert "Traceback" not in said
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    row = job_row(env.data_dir / "orchestrator.db", job_id)
    assert row is not None
    assert row["status"] == "running"  # left for recovery, nothing lost


def test_a_second_ctrl_c_exits_at_once_while_the_store_cannot_record_the_first(env: Env) -> None:
    """The first Ctrl-C's cancellation waits on a store that cannot write (its write lock
    held for good): the second one is still read at once and exits."""
    started = env.cwd / "slow.started"
    popen, stderr = _start_run(
        env, "--modules", "slow", "--option", "slow.seconds=120", "--option", f"slow.started_file={started}"
    )
    job_id = _running_job(env, popen)
    wait_for(started.is_file, what="the module to start")
    holder = sqlite3.connect(env.data_dir / "orchestrator.db", isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        popen.send_signal(signal.SIGINT)
        wait_for(lambda: f"SIGINT: cancelling job {job_id}" in stderr.read_text(), what="the first interrupt")
        popen.send_signal(signal.SIGINT)
        popen.communicate(timeout=20)  # the store's writes take about 45 s each to give up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert popen.returncode == 130, stderr.read_text()
    assert "orchestrator: error: interrupted again: exiting at once;" in stderr.read_text()
