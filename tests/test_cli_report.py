"""``orchestrator report`` on a scenario whose ground truth is known, from the store and
from the telemetry files, and ``orchestrator trace`` as an operator meets it."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Env, job_row, one_line_error, wait_for, write_ghost_plugin, write_plugin

from orchestrator.cli.report import parse_since
from orchestrator.serialization import timestamp

pytestmark = pytest.mark.timeout(300)

# Durations measured by the clock: equal on both sources up to how a module span's start
# differs from the module's recorded start (the span starts first, by micro- to milliseconds).
CLOCK_ROWS = ("execute", "finalize")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, dict[str, str]]:
    """Seven jobs, each with a known fate:

    A alpha  echo, slow 0 s      completed
    B alpha  echo, slow 1.2 s    completed, slow overruns its 1 s
    C beta   boom                failed: module
    D beta   panic               failed: module_panic
    E beta   hang                failed: module_timeout (0.3 s), and overran its 0.1 s
    F beta   echo                cancelled while queued (phase queued)
    G beta   ghost, echo         failed: module_unavailable on a worker without ghost
    """
    root = tmp_path_factory.mktemp("scenario")
    (root / "src").mkdir()
    (root / "src" / "a.py").write_text("x = 1\n")
    env = Env(cwd=root, data_dir=root / "data", plugins=[write_plugin(root / "plugin")])
    src = str(root / "src")
    ids: dict[str, str] = {}

    def run(label: str, project: str, *args: str) -> None:
        job = env.json("run", "--source", src, "--project-id", project, *args)
        ids[label] = job["id"]

    run("A", "alpha", "--modules", "echo,slow", "--option", "slow.seconds=0")
    run("B", "alpha", "--modules", "echo,slow", "--option", "slow.seconds=1.2")
    run("C", "beta", "--modules", "boom")
    run("D", "beta", "--modules", "panic")
    run("E", "beta", "--modules", "hang")
    ids["F"] = env.run("submit", "--source", src, "--project-id", "beta", "--modules", "echo").stdout.strip()
    cancelled = env.run("cancel", ids["F"])
    assert cancelled.stdout.strip() == f"job {ids['F']} cancelled", cancelled.stderr
    ghost = write_ghost_plugin(root / "ghost")
    with_ghost = {"PYTHONPATH": os.pathsep.join([str(ghost), env.environ()["PYTHONPATH"]])}
    submitted = env.run("submit", "--source", src, "--project-id", "beta", "--modules", "ghost,echo", env=with_ghost)
    ids["G"] = submitted.stdout.strip()
    with env.worker():
        wait_for(lambda: (job_row(env.data_dir / "orchestrator.db", ids["G"]) or {}).get("status") == "failed")
    return env, ids


def test_the_report_reproduces_the_known_ground_truth(scenario: tuple[Env, dict[str, str]]) -> None:
    env, ids = scenario
    report = env.json("report")
    assert report["source"] == "store"
    assert report["jobs"] == 7
    assert report["by_status"] == {"completed": 2, "failed": 4, "cancelled": 1}
    assert report["failures_by_phase"] == [
        {"phase": "create", "failures": 0},
        {"phase": "enqueue", "failures": 0},
        {"phase": "queued", "failures": 0},
        {"phase": "claim", "failures": 0},
        {"phase": "execute", "failures": 4},
        {"phase": "finalize", "failures": 0},
        {"phase": "notify", "failures": 0},
    ]
    assert [
        (row["module"], row["runs"], row["overruns"], row["cancelled_runs"], row["expected_ms"])
        for row in report["modules"]
    ] == [
        ("hang", 1, 1, 0, 100.0),
        ("slow", 2, 1, 0, 1000.0),
        ("boom", 1, 0, 0, 5000.0),
        ("echo", 2, 0, 0, 5000.0),
        ("panic", 1, 0, 0, 5000.0),
    ]
    assert [(r["category"], r["group"], r["failures"], r["jobs"]) for r in report["failures_by_category"]] == [
        ("transition", "transition/persistence", 0, []),
        ("persistence", "transition/persistence", 0, []),
        ("module", "module logic", 1, [ids["C"]]),
        ("module_timeout", "module logic", 1, [ids["E"]]),
        ("module_panic", "module logic", 1, [ids["D"]]),
        ("module_unavailable", "module not installed on the worker", 1, [ids["G"]]),
        ("queue", "queue (worker lost)", 0, []),
        ("internal", "internal", 0, []),
        ("validation", "validation", 0, []),
        ("webhook", "webhook", 0, []),
    ]
    assert report["failures_by_group"] == {
        "transition/persistence": 0,
        "module logic": 3,
        "module not installed on the worker": 1,
        "queue (worker lost)": 0,
        "internal": 0,
        "validation": 0,
        "webhook": 0,
    }
    assert report["cancelled"] == {"count": 1, "jobs": [ids["F"]]}
    assert [(row["phase"], row["count"]) for row in report["time_in_phase"]] == [
        ("create", 7),
        ("queued", 6),
        ("execute", 6),
        ("finalize", 5),
        ("execute (lost or requeued attempts)", 0),
        ("total", 7),
    ]
    slow = next(row for row in report["modules"] if row["module"] == "slow")
    assert 1200 <= slow["max_ms"] < 6000  # the 1.2 s sleep, not the 60 s timeout
    hang = next(row for row in report["modules"] if row["module"] == "hang")
    assert 300 <= hang["max_ms"] < 2000  # cut at its 0.3 s timeout

    listed = env.json("jobs", "--error-category", "module_panic")
    assert [j["id"] for j in listed] == [ids["D"]]
    # Created since: all seven a day back, none in the future, and a window cut between
    # two of them keeps the later ones, newest first.
    everything = env.json("jobs", "--since", "1d")
    assert sorted(j["id"] for j in everything) == sorted(ids.values())
    assert env.json("jobs", "--since", "2999-01-01T00:00:00Z") == []
    by_age = sorted(everything, key=lambda j: j["created_at"])
    third, fourth = (dt.datetime.fromisoformat(j["created_at"]) for j in by_age[2:4])
    cut = (third + (fourth - third) / 2).isoformat()
    assert [j["id"] for j in env.json("jobs", "--since", cut)] == [j["id"] for j in reversed(by_age[3:])]
    # A job's own created_at given back keeps that job (and the later ones).
    for at in (3, 6):
        listed = env.json("jobs", "--since", by_age[at]["created_at"])
        assert [j["id"] for j in listed] == [j["id"] for j in reversed(by_age[at:])]


def _without_clock_rows(report: dict[str, Any]) -> dict[str, Any]:
    # "filters": a relative --since resolves to a slightly later time in the later command
    stripped = {k: v for k, v in report.items() if k not in ("source", "where", "time_in_phase", "filters")}
    stripped["time_in_phase"] = [
        row if row["phase"] not in CLOCK_ROWS else {"phase": row["phase"], "count": row["count"]}
        for row in report["time_in_phase"]
    ]
    return stripped


def test_the_report_from_the_store_matches_the_report_from_the_files(scenario: tuple[Env, dict[str, str]]) -> None:
    env, _ = scenario
    for args in ([], ["--project-id", "beta"], ["--since", "1d"]):
        store = env.json("report", "--from", "store", *args)
        files = env.json("report", "--from", "files", *args)
        assert (store["source"], files["source"]) == ("store", "files")
        assert _without_clock_rows(store) == _without_clock_rows(files), args
        for a, b in zip(store["time_in_phase"], files["time_in_phase"], strict=True):
            if a["phase"] in CLOCK_ROWS:
                for key in ("p50_ms", "p95_ms", "max_ms"):
                    # the store's start of execution and the module span's are apart by
                    # however long the process was held up between them: milliseconds,
                    # more on a loaded machine; a unit error would be a factor of 1000
                    # (job B's execute alone is 1.2 s)
                    assert abs(a[key] - b[key]) <= 500.0, (a, b)


def test_report_filters_by_project_and_time_window(scenario: tuple[Env, dict[str, str]]) -> None:
    env, _ = scenario
    alpha = env.json("report", "--project-id", "alpha")
    assert (alpha["jobs"], alpha["by_status"]) == (2, {"completed": 2, "failed": 0, "cancelled": 0})
    assert alpha["filters"] == {"since": None, "project_id": "alpha"}
    assert env.json("report", "--since", "1d")["jobs"] == 7
    future = env.json("report", "--since", "2999-01-01T00:00:00Z")
    assert future["jobs"] == 0
    assert future["filters"]["since"] == "2999-01-01T00:00:00.000000Z"
    assert all(row["failures"] == 0 for row in future["failures_by_category"])
    line = one_line_error(env.run("report", "--since", "yesterday"))
    assert line == "--since 'yesterday': expected a duration (30m, 6h, 2d) or an ISO time (2026-11-30T12:00:00Z)"


def test_the_text_report_shows_every_category_and_keeps_cancellations_apart(
    scenario: tuple[Env, dict[str, str]],
) -> None:
    env, _ = scenario
    text = env.run("report").stdout
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "transition/persistence 0 transition 0, persistence 0" in lines
    assert "module logic 3 module 1, module_timeout 1, module_panic 1" in lines
    assert "module not installed on the worker 1" in lines
    assert "internal 0" in lines
    assert "cancelled (not failures) 1" in lines
    assert not any(line.startswith("other") for line in lines)
    phases = [line.split()[0] for line in lines[lines.index("phase count p50 p95 max") + 1 :] if line]
    assert phases == ["create", "queued", "execute", "finalize", "execute", "total"]


# -- trace as an operator meets it --------------------------------------------------------


def test_trace_with_the_wrong_data_directory_says_where_it_looked(
    scenario: tuple[Env, dict[str, str]], tmp_path: Path
) -> None:
    _, ids = scenario
    elsewhere = Env(cwd=tmp_path, data_dir=tmp_path / "other")
    line = one_line_error(elsewhere.run("trace", ids["A"]))
    assert line == (
        f"no job '{ids['A']}' in the SQLite database {tmp_path / 'other' / 'orchestrator.db'} (which does not exist) "
        f"and no spans of it in {tmp_path / 'other' / 'telemetry'} (another --data-dir or ORCHESTRATOR_DATABASE_URL?)"
    )
    assert not (tmp_path / "other").exists()


def test_trace_right_after_a_worker_finished_a_job_tells_the_truth(tmp_path: Path) -> None:
    env = Env(cwd=tmp_path, data_dir=tmp_path / "data", plugins=[write_plugin(tmp_path / "plugin")])
    (tmp_path / "src").mkdir()
    job_id = env.run("submit", "--source", str(tmp_path / "src"), "--modules", "echo").stdout.strip()
    database = env.data_dir / "orchestrator.db"
    # The worker exports spans in batches; a long batch delay holds them until it stops.
    with env.worker(env={"OTEL_BSP_SCHEDULE_DELAY": "600000"}) as worker:
        wait_for(lambda: (job_row(database, job_id) or {}).get("status") == "completed", what="completion")
        early = env.run("trace", job_id)
        worker.stop()
    assert early.returncode in (0, 2), early.stderr
    said = early.stdout + early.stderr
    assert "the job has not finished" not in said
    assert f"job {job_id} is completed" in said or "the job finished (completed at " in said, said
    finished = env.run("trace", job_id)
    assert finished.returncode == 0, finished.stderr
    job = json.loads(env.run("status", job_id, "--json").stdout)
    assert finished.stdout.splitlines()[0] == f"trace {job['trace_id']}  job {job_id}"
    assert "job src [completed]" in finished.stdout


@pytest.mark.parametrize(
    ("text", "ns", "shown"),
    [
        # 10**9 s after the epoch is 2001-09-09T01:46:40Z; a float of seconds has no room
        # for the last nanoseconds (it rounded ...40.999999999 up to ...41).
        ("2001-09-09T01:46:40.999999Z", 1_000_000_000_999_999_000, "2001-09-09T01:46:40.999999Z"),
        ("2001-09-09T03:46:40.000001+02:00", 1_000_000_000_000_001_000, "2001-09-09T01:46:40.000001Z"),
        ("2001-09-09T01:46:40.123457", 1_000_000_000_123_457_000, "2001-09-09T01:46:40.123457Z"),
        ("1970-01-01T00:00:00.000001Z", 1_000, "1970-01-01T00:00:00.000001Z"),
    ],
)
def test_times_are_read_and_written_to_the_exact_microsecond(text: str, ns: int, shown: str) -> None:
    assert parse_since(text, now_ns=0) == ns
    assert timestamp(ns) == timestamp(ns + 999) == shown  # cut, not rounded up
    assert parse_since(shown, now_ns=0) == ns


@pytest.mark.parametrize("since", ["99999999d", "9" * 400 + "w", "0001-01-01"])
def test_a_window_reaching_before_1970_takes_every_job(scenario: tuple[Env, dict[str, str]], since: str) -> None:
    env, _ = scenario
    everything = env.json("report")
    report = env.json("report", "--since", since)
    assert report["jobs"] == everything["jobs"] == 7
    assert report["filters"]["since"] == "1970-01-01T00:00:00.000000Z"


def test_a_window_starting_after_year_9999_takes_no_job(scenario: tuple[Env, dict[str, str]]) -> None:
    env, _ = scenario
    report = env.json("report", "--since", "9999-12-31T23:59:59-12:00")  # year 10000 in UTC
    assert report["jobs"] == 0
    assert report["filters"]["since"] == "9999-12-31T00:00:00.000000Z"
