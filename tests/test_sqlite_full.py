"""A SQLite store whose files cannot grow (a full disk; here a real file-size limit,
``RLIMIT_FSIZE``, on a subprocess: the kernel refuses the writes as a full disk would).

Every write fails the same way until someone acts, so the caller is told why (SQLite's
message for these failures names no data), and the log says it once per interval with a
count, not once per call: a worker retrying every second must not flood the log."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = r"""
import json, logging, resource, signal, sys, time
from dataclasses import replace
from pathlib import Path

import anyio

from orchestrator.domain import Job, JobOptions, JobStatus, PersistenceError, TraceContext, now_ns
from orchestrator.stores.sqlite import SQLiteJobStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails (EFBIG), not the process
records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logger = logging.getLogger("orchestrator.stores.sqlite")
logger.addHandler(Keep())
logger.setLevel(logging.INFO)
logger.propagate = False


async def main():
    path = Path(sys.argv[1])
    store = SQLiteJobStore(path)
    await store.open()
    largest = max(p.stat().st_size for p in path.parent.iterdir())
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 64 * 1024, resource.RLIM_INFINITY))
    stored, errors = 0, []
    started = time.monotonic()
    for i in range(400):
        job = Job.new(project_id="full", source="/srv/" + "x" * 2000, modules=("a",), options=JobOptions(),
                      trace=TraceContext.new())
        at = now_ns()
        try:
            await store.insert(replace(job, status=JobStatus.QUEUED, status_ns=at, queued_ns=at, reason="enqueued"))
            stored += 1
        except PersistenceError as exc:
            errors.append(exc.message)
    elapsed = time.monotonic() - started
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    after = len(await store.list_jobs(limit=1000))
    await store.close()
    print(json.dumps({"stored": stored, "after": after, "errors": errors, "records": records, "elapsed": elapsed}))


anyio.run(main)
"""


def test_a_store_that_cannot_grow_says_why_and_logs_it_once_per_interval(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "data" / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    errors: list[str] = outcome["errors"]
    assert outcome["stored"] > 0, "the limit left no room at all: the test proves nothing"
    assert len(errors) > 100, outcome  # every write after the limit failed, each one typed
    assert outcome["after"] == outcome["stored"]  # nothing half-written, nothing lost
    # The reason, not only "details in the log": the same words on every failure.
    said = re.compile(
        rf"the sqlite store at {re.escape(str(tmp_path / 'data' / 'jobs.db'))} failed to insert_job: (.+) \(error id "
    )
    matched = [said.match(e) for e in errors]
    assert all(matched), errors[:3]
    reasons = {m[1] for m in matched if m}
    assert reasons <= {"database or disk is full", "disk I/O error"}, reasons
    # The log: the first failure at once, then one record per 5 s interval at most, the
    # later ones counting what they stand for.
    failures = [r for r in outcome["records"] if " failed: " in r]
    assert 1 <= len(failures) <= 1 + int(outcome["elapsed"] // 5), failures
    assert any(reason in failures[0] for reason in reasons), failures


def test_a_different_failure_is_logged_while_one_repeats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The once-per-interval limit is per kind of failure and operation: a corruption in
    the middle of a full-disk episode is logged with its own words, and an error whose
    record was held back says so instead of sending the reader to the log."""
    from orchestrator.stores.sqlite import SQLiteConnector

    def failure(message: str, code: int, name: str) -> sqlite3.Error:
        error = sqlite3.OperationalError(message)
        error.sqlite_errorcode, error.sqlite_errorname = code, name
        return error

    connector = SQLiteConnector(tmp_path / "jobs.db")
    full = ("database or disk is full", sqlite3.SQLITE_FULL, "SQLITE_FULL")
    with caplog.at_level(logging.ERROR, logger="orchestrator.stores.sqlite"):
        first = connector._error("insert_job", failure(*full))
        again = connector._error("insert_job", failure(*full))
        other = connector._error("apply_transition", failure(*full))
        corrupt = connector._error("insert_job", failure("database disk image is malformed", 11, "SQLITE_CORRUPT"))
    logged = [r.getMessage() for r in caplog.records]
    assert [m.split(" (error id")[0] for m in logged] == [
        "sqlite insert_job failed: database or disk is full",
        "sqlite apply_transition failed: database or disk is full",
        "sqlite insert_job failed: database disk image is malformed",
    ]
    assert first.message.endswith("; details in the log)")
    assert again.message.endswith("; logged once per 5 s while it repeats)"), again.message
    assert other.message.endswith("; details in the log)")
    assert corrupt.message.endswith("; details in the log)")
