"""The command line as people really use it: real subprocesses on real SQLite files,
each reproduction of issue 13 as a test that asserts what the user reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import (
    ORCHESTRATOR,
    Env,
    job_row,
    one_line_error,
    wait_for,
    write_broken_plugin,
    write_ghost_plugin,
    write_plugin,
)

pytestmark = pytest.mark.timeout(300)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(cwd=tmp_path, data_dir=tmp_path / "data", plugins=[write_plugin(tmp_path / "plugin")])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "main.py").write_text("# TODO: more\nVALUE = 1\n")
    return root


# -- ids you can copy ---------------------------------------------------------------------


def test_piped_jobs_output_holds_whole_ids_and_timestamps_that_parse_back(env: Env, project: Path) -> None:
    submitted = [env.run("submit", "--source", str(project), "--project-id", f"p{i}").stdout.strip() for i in range(3)]
    assert all(UUID.match(i) for i in submitted), submitted

    listed = env.run("jobs")  # stdout is a pipe here, as in `orchestrator jobs | awk`
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["id", "project", "status", "attempt", "created", "category", "reason"]
    parsed = [row.split() for row in rows]
    assert [r[0] for r in parsed] == list(reversed(submitted))  # newest first, whole
    assert [r[1] for r in parsed] == ["p2", "p1", "p0"]
    for r in parsed:
        assert r[2] == "queued"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r[4]), r[4]
    assert max(len(line) for line in listed.stdout.splitlines()) > 80  # not cut at 80 columns

    events = env.run("events", submitted[0]).stdout.splitlines()
    assert events[0].split()[:2] == ["#", "at"]
    stamps = [line.split()[1] for line in events[1:]]
    assert len(stamps) == 2
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", s) for s in stamps), stamps


def test_json_into_a_closed_pipe_stops_quietly(env: Env) -> None:
    popen = subprocess.Popen(
        [*ORCHESTRATOR, "modules", "--json"],
        cwd=env.cwd,
        env=env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert popen.stdout is not None
    popen.stdout.close()  # the reader is gone before anything was written, as with `| head -0`
    _, stderr = popen.communicate(timeout=60)
    assert stderr.decode() == ""
    assert popen.returncode == 141


# -- project ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "project_id"),
    [
        ("my project", "my-project"),
        ("_build", "build"),
        (".dotfiles", "dotfiles"),
        ("café", "cafe"),
        ("Résumé (v2)!", "resume-v2"),
        ("日本語", "project"),
    ],
)
def test_the_default_project_id_is_a_slug_of_the_folder_name(
    env: Env, tmp_path: Path, folder: str, project_id: str
) -> None:
    source = tmp_path / folder
    source.mkdir()
    (source / "a.py").write_text("x = 1\n")
    done = env.run("submit", "--source", str(source), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["project_id"] == project_id


def test_a_bad_project_id_names_the_flag(env: Env, project: Path) -> None:
    line = one_line_error(env.run("submit", "--source", str(project), "--project-id", "bad id!"))
    assert line == "--project-id: use letters, digits and . _ : / -, starting with a letter or digit"


# -- the demo -----------------------------------------------------------------------------


def test_the_demo_runs_in_its_own_directory_and_leaves_user_data_alone(env: Env, project: Path) -> None:
    mine = env.run("run", "--source", str(project), "--project-id", "mine", "--modules", "echo", "--json")
    assert mine.returncode == 0, mine.stderr
    before = {p.relative_to(env.data_dir): p.stat().st_mtime_ns for p in env.data_dir.rglob("*") if p.is_file()}

    unreachable = {"ORCHESTRATOR_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing"}
    demo = env.run("demo", env=unreachable)
    assert demo.returncode == 0, demo.stderr[-3000:]
    demo_dir = env.cwd / ".orchestrator-demo"
    assert f"in its own directory {demo_dir}" in demo.stdout
    assert "ORCHESTRATOR_DATABASE_URL is set: the demo ignores it" in demo.stdout
    assert "--data-dir / ORCHESTRATOR_DATA_DIR are not used by the demo" in demo.stdout
    assert (demo_dir / ".orchestrator-demo").is_file()
    assert (demo_dir / "orchestrator.db").is_file()

    after = {p.relative_to(env.data_dir): p.stat().st_mtime_ns for p in env.data_dir.rglob("*") if p.is_file()}
    assert after == before  # not one file of the user's data directory touched
    [job] = env.json("jobs")
    assert (job["id"], job["project_id"]) == (json.loads(mine.stdout)["id"], "mine")
    demo_jobs = json.loads(env.run("--data-dir", str(demo_dir), "jobs", "--json").stdout)
    assert sorted(j["project_id"] for j in demo_jobs) == [
        "broken-manifest",
        "clean-service",
        "large-monorepo",
        "nightly-batch",
    ]

    again = env.run("demo")  # starts afresh in its own directory: still four jobs
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads(env.run("--data-dir", str(demo_dir), "jobs", "--json").stdout)) == 4


def test_the_demo_refuses_a_directory_that_is_not_its_own(env: Env, project: Path) -> None:
    line = one_line_error(env.run("demo", "--dir", str(project)))
    assert line.startswith(f"demo --dir {project}: not empty and not a demo directory")
    assert sorted(p.name for p in project.iterdir()) == ["main.py"]


# -- errors people read -------------------------------------------------------------------


def test_a_database_error_ends_in_one_readable_line(env: Env) -> None:
    done = env.run("jobs", env={"ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    *logged, last = done.stderr.strip().splitlines()
    for line in logged:  # the store's own record, with the driver's details, as JSON
        assert json.loads(line)["level"] == "error"
    assert last.startswith("orchestrator: error: ")
    assert "127.0.0.1:1/nothing" in last
    assert "\\n" not in last
    assert "\t" not in last


def test_a_broken_plugin_is_one_line_naming_it_and_only_where_modules_are_loaded(env: Env, tmp_path: Path) -> None:
    env.plugins.append(write_broken_plugin(tmp_path / "broken"))
    listed = env.run("modules")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1, listed.stderr
    record = json.loads(lines[0])
    assert record["message"].startswith("cannot load module entry point 'broken' (cli_broken_module:DoesNotExist)")
    assert record["message"].endswith("(traceback with --log-level debug)")
    assert "Traceback" not in listed.stderr
    assert "echo" in listed.stdout  # the other plugins still load

    assert env.run("jobs").stderr == ""  # listing jobs loads no module
    debug = env.run("--log-level", "debug", "modules")
    assert "Traceback" in debug.stderr
    assert "DoesNotExist" in debug.stderr


def test_listing_modules_neither_needs_nor_creates_a_store(env: Env) -> None:
    # `orchestrator modules` in any folder (right after `pipx install`): no database is
    # created where it runs, and a configured database that is down does not matter.
    unreachable = env.run("modules", env={"ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"})
    assert unreachable.returncode == 0, unreachable.stderr
    assert unreachable.stderr == ""
    listed = [line.split()[0] for line in unreachable.stdout.splitlines()[1:]]
    assert listed == [
        *("boom", "deaf", "dependencies", "echo", "hang", "inventory", "panic"),
        *("python_syntax", "secrets", "slow", "stubborn", "todos"),
    ]

    rows = env.json("modules")
    assert [row["name"] for row in rows] == listed
    assert not env.data_dir.exists(), sorted(env.data_dir.rglob("*"))


# -- cancel tells the truth ---------------------------------------------------------------


def test_cancelling_a_finished_job_says_it_already_finished(env: Env, project: Path) -> None:
    done = env.json("run", "--source", str(project), "--modules", "echo")
    line = one_line_error(env.run("cancel", done["id"]))
    assert re.fullmatch(
        rf"job {done['id']} already completed at \d{{4}}-\d\d-\d\dT[\d:.]+Z: nothing to cancel", line
    ), line


def test_cancel_says_what_happens_to_a_running_job_with_and_without_a_live_worker(env: Env, project: Path) -> None:
    database = env.data_dir / "orchestrator.db"
    # Short leases, so that the dead worker's expires soon, yet long enough that a live
    # worker's lease never lapses between heartbeats on a loaded machine.
    fast_leases = {"ORCHESTRATOR_LEASE_SECONDS": "4", "ORCHESTRATOR_HEARTBEAT_SECONDS": "0.5"}
    first = env.run(
        "submit", "--source", str(project), "--modules", "slow", "--option", "slow.seconds=60"
    ).stdout.strip()
    second = env.run(
        "submit", "--source", str(project), "--modules", "slow", "--option", "slow.seconds=60"
    ).stdout.strip()
    with env.worker("--concurrency", "2", env=fast_leases) as worker:
        for job_id in (first, second):
            wait_for(lambda j=job_id: (job_row(database, j) or {}).get("status") == "running", what="running")
        owner = job_row(database, first)["lease_owner"]  # type: ignore[index]
        assert f":{worker.pid}:" in owner
        live = env.run("cancel", first)
        assert live.returncode == 0, live.stderr
        assert live.stdout.startswith(
            f"cancellation of running job {first} requested: worker {owner} holds its lease and stops it within "
            "about 0.5 s"
        ), live.stdout
        wait_for(lambda: (job_row(database, first) or {}).get("status") == "cancelled", what="cancelled by worker")
        worker.kill()  # no graceful stop: the second job stays Running with a lease nobody renews

    expires = job_row(database, second)["lease_expires_ns"]  # type: ignore[index]
    wait_for(lambda: time.time_ns() > expires, timeout=20, what="the lease to expire")
    dead = env.run("cancel", second)
    assert dead.returncode == 0, dead.stderr
    assert dead.stdout.startswith(f"job {second} cancelled: no worker was running it (the lease of "), dead.stdout
    assert "its worker stops it shortly" not in dead.stdout
    row = job_row(database, second)
    assert row is not None
    assert (row["status"], row["reason"]) == ("cancelled", "cancelled by user")


# -- a module the worker does not have ----------------------------------------------------


def test_a_job_naming_a_module_the_worker_lacks_fails_with_its_own_category(
    env: Env, tmp_path: Path, project: Path
) -> None:
    ghost = write_ghost_plugin(tmp_path / "ghost")
    with_ghost = {"PYTHONPATH": os.pathsep.join([str(ghost), env.environ()["PYTHONPATH"]])}
    submitted = env.run("submit", "--source", str(project), "--modules", "ghost,echo", env=with_ghost)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    database = env.data_dir / "orchestrator.db"
    with env.worker() as worker:  # its PYTHONPATH has the test modules, not the ghost
        row = wait_for(lambda: (r := job_row(database, job_id)) and r["status"] == "failed" and r, what="failure")
    assert row["error_category"] == "module_unavailable"
    assert row["error_phase"] == "execute"
    assert re.fullmatch(
        rf"module 'ghost' not available on worker [^ ]+:{worker.pid}:[0-9a-f]+ \(it has: .*\becho\b.*\)", row["reason"]
    ), row["reason"]
    assert "TaskGroup" not in row["reason"]

    listed = env.json("jobs", "--error-category", "module_unavailable")
    assert [j["id"] for j in listed] == [job_id]
    for source in ("store", "files"):
        report = env.json("report", "--from", source)
        by_category = {row["category"]: row for row in report["failures_by_category"]}
        assert by_category["module_unavailable"]["jobs"] == [job_id], source
        assert by_category["internal"]["failures"] == 0, source


# -- job options --------------------------------------------------------------------------


def test_job_options_from_flags_reach_the_module_json_typed(env: Env, project: Path) -> None:
    job = env.json(
        "run",
        "--source",
        str(project),
        "--modules",
        "echo",
        "--options-json",
        '{"module_options": {"echo": {"from_json": [1, 2], "depth": 1}}}',
        "--option",
        "echo.depth=3",
        "--option",
        "echo.name=plain text",
        "--option",
        "echo.flag=true",
    )
    assert job["status"] == "completed", job
    assert job["results"][0]["summary"] == {
        "options": {"from_json": [1, 2], "depth": 3, "name": "plain text", "flag": True}
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--option", "echo"], "--option 'echo': expected MODULE.KEY=VALUE, e.g. license.allowed=[\"MIT\"]"),
        (["--option", "todos.x=1"], "--option/--options-json: not among the job's modules: todos"),
        (["--options-json", "[1]"], "--options-json: expected a JSON object, got list"),
        (
            ["--options-json", "{nope"],
            "--options-json: not valid JSON "
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
    ],
)
def test_bad_job_options_name_the_flag(env: Env, project: Path, args: list[str], message: str) -> None:
    assert one_line_error(env.run("submit", "--source", str(project), "--modules", "echo", *args)) == message


def test_options_json_reads_a_regular_file_only_and_never_waits(env: Env, project: Path, tmp_path: Path) -> None:
    """A FIFO blocked the command until it was killed; a device would never end."""
    fifo = tmp_path / "options.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text('{"module_options": {"echo": {"x": "' + "y" * (1024 * 1024) + '"}}}')
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"module_options": {"echo": {"x": "\xe9"}}}')
    missing = tmp_path / "missing.json"
    refused = {
        fifo: f"--options-json: {fifo} is not a regular file",
        tmp_path: f"--options-json: {tmp_path} is not a regular file",
        Path("/dev/zero"): "--options-json: /dev/zero is not a regular file",
        missing: f"--options-json: cannot read {missing}: No such file or directory",
        big: f"--options-json: {big} is larger than 1024 KiB",
        latin: f"--options-json: {latin} is not UTF-8 text",
    }
    for path, message in refused.items():
        done = env.run("submit", "--source", str(project), "--modules", "echo", "--options-json", f"@{path}",
                       timeout=60)
        assert one_line_error(done) == message
    good = tmp_path / "good.json"
    good.write_text('{"module_options": {"echo": {"from_file": true}}}')
    job = env.json("run", "--source", str(project), "--modules", "echo", "--options-json", f"@{good}")
    assert job["results"][0]["summary"] == {"options": {"from_file": True}}


def test_a_refused_setting_names_the_flag_that_gave_it(env: Env, project: Path) -> None:
    done = env.run("worker", "--concurrency", "0")
    assert one_line_error(done) == (
        "invalid setting concurrency (--concurrency): Input should be greater than or equal to 1"
    )
    done = env.run("jobs", env={"ORCHESTRATOR_CONCURRENCY": "0"})
    assert one_line_error(done) == (
        "invalid setting concurrency (ORCHESTRATOR_CONCURRENCY): Input should be greater than or equal to 1"
    )


def test_a_reversed_range_in_an_ignore_pattern_is_refused_or_dropped(env: Env, project: Path) -> None:
    """``[z-a]`` failed in the regular expression, past the pattern check: a traceback on
    every command (setting), on run/submit (flag), and a panic of every module of a job
    whose tree had it in a .gitignore."""
    done = env.run("jobs", env={"ORCHESTRATOR_ANALYSIS_IGNORE": "[z-a]"})
    assert one_line_error(done).startswith(
        "invalid setting analysis_ignore (ORCHESTRATOR_ANALYSIS_IGNORE): Value error, pattern '[z-a]': "
        "bad character range z-a"
    )
    done = env.run("submit", "--source", str(project), "--options-json", '{"ignore": ["[z-a]"]}')
    assert one_line_error(done).startswith("--options-json (ignore): pattern '[z-a]': bad character range z-a")
    (project / ".gitignore").write_text("[z-a]\n*.log\n")
    (project / "debug.log").write_text("TODO: not read\n")
    job = env.json("run", "--source", str(project), "--modules", "inventory")
    assert job["status"] == "completed", job
    assert job["results"][0]["summary"]["total_files"] == len(
        [p for p in project.rglob("*") if p.is_file() and p.suffix != ".log"]
    )


def test_a_data_directory_that_cannot_be_one_is_one_line_naming_where_it_came_from(
    env: Env, project: Path, tmp_path: Path
) -> None:
    """The store's error said only "failed to open (error id ...)", followed by the
    telemetry files' own failures in the same place."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    for data_dir, flag, message in (
        (a_file, "ORCHESTRATOR_DATA_DIR", f"{a_file} is not a directory"),
        (a_file / "sub", "ORCHESTRATOR_DATA_DIR", f"{a_file} is not a directory"),
        (Path("/dev/null"), "ORCHESTRATOR_DATA_DIR", "/dev/null is not a directory"),
    ):
        done = env.run("run", "--source", str(project), env={"ORCHESTRATOR_DATA_DIR": str(data_dir)})
        assert one_line_error(done) == f"the data directory {data_dir} ({flag}) cannot be used: {message}"
    done = env.run("--data-dir", str(a_file), "jobs")
    assert one_line_error(done) == (
        f"the data directory {a_file} (--data-dir) cannot be used: {a_file} is not a directory"
    )
    assert a_file.read_text() == "not a directory\n"
    # A directory where the database file should be: SQLite's reason is in the line.
    data_dir = tmp_path / "data"
    (data_dir / "orchestrator.db").mkdir(parents=True)
    done = env.run("jobs", env={"ORCHESTRATOR_DATA_DIR": str(data_dir)})
    assert done.returncode == 1, done.stderr
    assert (
        f"orchestrator: error: the sqlite store at {data_dir / 'orchestrator.db'} failed to open: "
        "unable to open database file (error id "
    ) in done.stderr


def test_a_source_root_that_is_not_utf8_is_one_line_showing_its_bytes(env: Env) -> None:
    """pydantic could not carry the path's lone surrogates into its message: a traceback
    on every command."""
    done = env.run("jobs", env={"ORCHESTRATOR_SOURCE_ROOTS": os.fsdecode(b"rel\xff\xfe")})
    assert one_line_error(done) == (
        "invalid setting source_roots (ORCHESTRATOR_SOURCE_ROOTS): Value error, "
        "must be absolute paths (got rel\\xff\\xfe)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "70000"], "orchestrator serve: error: argument --port: 70000 is not between 0 and 65535"),
        (["serve", "--port", "80x"], "orchestrator serve: error: argument --port: '80x' is not a whole number"),
        (
            ["serve", "--workers-in-process", "-1"],
            "orchestrator serve: error: argument --workers-in-process: -1 is not between 0 and 64",
        ),
        (["jobs", "--limit", "0"], "orchestrator jobs: error: argument --limit: 0 is not between 1 and 1000"),
        (["jobs", "--limit", "5000"], "orchestrator jobs: error: argument --limit: 5000 is not between 1 and 1000"),
        (
            ["webhooks", "deliveries", "--limit", "99999999999999999999"],
            "orchestrator webhooks deliveries: error: argument --limit: 99999999999999999999 is not between 1 and 500",
        ),
        (
            ["webhooks", "deliveries", "--limit", "-5"],
            "orchestrator webhooks deliveries: error: argument --limit: -5 is not between 1 and 500",
        ),
    ],
)
def test_numbers_out_of_range_are_one_line_naming_the_flag(env: Env, args: list[str], message: str) -> None:
    """A port the OS cannot bind was a traceback (OverflowError); a limit of 0 or beyond
    the maximum was silently changed."""
    done = env.run(*args)
    assert (done.returncode, done.stderr.splitlines()[-1:], done.stdout) == (2, [message], "")
    assert "Traceback" not in done.stderr


def test_an_option_a_built_in_module_does_not_read_is_refused(env: Env, project: Path) -> None:
    done = env.run("submit", "--source", str(project), "--modules", "todos", "--option", 'todos.markers=["TODO"]')
    assert one_line_error(done) == "--option/--options-json (todos): todos has no option markers (it takes no options)"


# -- telemetry that could not be delivered ------------------------------------------------


def test_run_says_once_at_exit_that_telemetry_could_not_be_delivered(env: Env, project: Path) -> None:
    refused = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}
    done = env.run("run", "--source", str(project), "--modules", "echo", "--json", env=refused)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    notes = [line for line in done.stderr.splitlines() if line.startswith("orchestrator: note: telemetry")]
    assert len(notes) == 1, done.stderr
    assert notes[0].startswith(
        "orchestrator: note: telemetry could not be delivered to the OTLP endpoint 127.0.0.1:9 ("
    )
    assert notes[0].endswith("); jobs are not affected")
    assert "Traceback" not in done.stderr


def test_per_job_module_budgets_from_flags(env: Env, project: Path) -> None:
    job = env.json(
        "run",
        "--source",
        str(project),
        "--modules",
        "slow",
        "--option",
        "slow.seconds=0.3",
        "--expected",
        "slow=0.1",
        "--timeout",
        "slow=30",
    )
    assert job["options"]["module_budgets"] == {"slow": {"timeout_s": 30.0, "expected_s": 0.1}}
    [slow] = job["results"]
    assert (slow["outcome"], slow["expected_ms"], slow["timeout_ms"], slow["overran"]) == ("ok", 100.0, 30000.0, True)

    cut = env.json(
        "run", "--source", str(project), "--modules", "slow", "--option", "slow.seconds=30", "--timeout", "slow=0.2"
    )
    assert (cut["status"], cut["error_category"]) == ("failed", "module_timeout")
    assert cut["results"][0]["timeout_ms"] == 200.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--timeout", "slow=abc"],
            "--timeout 'slow=abc': expected MODULE=SECONDS with SECONDS a positive number, e.g. secrets=120",
        ),
        (
            ["--expected", "slow"],
            "--expected 'slow': expected MODULE=SECONDS with SECONDS a positive number, e.g. secrets=120",
        ),
        (
            ["--timeout", "slow=-1"],
            "--timeout 'slow=-1': expected MODULE=SECONDS with SECONDS a positive number, e.g. secrets=120",
        ),
    ],
)
def test_bad_budget_flags_name_the_flag(env: Env, project: Path, args: list[str], message: str) -> None:
    assert one_line_error(env.run("submit", "--source", str(project), "--modules", "slow", *args)) == message


# -- ids by unique prefix -----------------------------------------------------------------


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_every_command_taking_a_job_id_takes_a_unique_prefix(env: Env, project: Path) -> None:
    first = env.json("run", "--source", str(project), "--modules", "echo")["id"]
    second = env.run("submit", "--source", str(project), "--modules", "echo").stdout.strip()
    shared = _common_prefix(first, second)
    # uuid7: ids made moments apart share their time prefix. How much of it depends on
    # where the clock stands: two ids a second apart can straddle a 65.5 s boundary of the
    # millisecond count (then they share 7 hex digits, not 8); 5 digits change every 74 h.
    assert len(shared) >= 5
    unique = first[: len(shared) + 1]  # one character more tells them apart

    assert env.json("status", unique)["id"] == first
    assert [e["status_to"] for e in env.json("events", unique.upper())][-1] == "completed"
    trace = env.run("trace", unique)
    assert trace.returncode == 0, trace.stderr
    assert trace.stdout.splitlines()[0].endswith(f"job {first}")
    deliveries = env.run("webhooks", "deliveries", "--job-id", unique, "--json")
    assert (deliveries.returncode, json.loads(deliveries.stdout)) == (0, [])
    cancelled = env.run("cancel", second[: len(shared) + 1])
    assert cancelled.stdout.strip() == f"job {second} cancelled", cancelled.stderr

    for command in (["status"], ["events"], ["cancel"], ["trace"]):
        line = one_line_error(env.run(*command, shared))
        assert line == f"job id prefix {shared!r} is ambiguous: {first}, {second} (type more of the id)", line
    assert one_line_error(env.run("status", "zz-not-hex")) == "no job with id 'zz-not-hex'"
    assert one_line_error(env.run("status", "ffff")) == "no job with id 'ffff'"


def test_webhook_subscriptions_are_named_by_a_unique_prefix(env: Env) -> None:
    secret = {"HOOK_SECRET": "s" * 24}
    add = ["webhooks", "add", "--project-id", "acme", "--url", "https://hooks.example.com/x", "--secret-env"]
    ids = [env.run(*add, "HOOK_SECRET", env=secret).stdout.strip() for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    unique = next(n for n in range(1, 17) if ids[0][:n] != ids[1][:n])
    removed = env.run("webhooks", "remove", ids[0][:unique])
    assert removed.stdout.strip() == f"webhook {ids[0]} removed", removed.stderr
    listed = env.json("webhooks", "list")
    assert [s["id"] for s in listed] == [ids[1]]
