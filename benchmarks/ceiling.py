"""The ceiling: how many jobs' worth of our statements PostgreSQL commits per second here.

A pgbench custom script replays, per pgbench transaction, the statements one job costs
the store, generated from the store's own named queries and parameters (so the script
follows the product): ``insert_job`` (the job inserted Queued; the schema's triggers
write its two history rows, the outbox and the NOTIFY), ``claim`` (``LIMIT 1``, as a
worker with one free slot), and the terminal ``apply_transition`` with a one-module
result, returning the job's history (a sampled job's root span is built from it) in the
same statement, with the root span's emitter stamp of durable traces. Values are bound client side
(psycopg's ``ClientCursor.mogrify``); only the job id varies, as a pgbench parameter, and
pgbench runs with prepared statements, as psycopg does for statements a connection
repeats. (pgbench takes any ``:word`` for a variable, so JSON literals get a space after
their colons: the values differ by a few bytes, not the work.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.domain import (
    Job,
    JobOptions,
    JobStatus,
    ModuleOutcome,
    ModuleResult,
    TraceContext,
    Transition,
    now_ns,
)
from orchestrator.stores import rows, sql

__all__ = ["PGBENCH", "job_script", "pgbench_tps"]

PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
_SENTINEL = "BENCHJOBIDSENTINEL"
_CLAIMED = "CLAIMEDSENTINEL"
_Q = sql.queries("postgres")

_JSON_COLON = re.compile(r'":(?=\S)')


def _sql(cur: psycopg.ClientCursor[Any], name: str, params: dict[str, Any]) -> str:
    text = cur.mogrify(_Q[name], params)
    return _JSON_COLON.sub('": ', text.strip().rstrip(";"))


def _queued_job(at: int) -> Job:
    """A job as ``JobWorkflow.create(enqueue=True)`` inserts it: already Queued."""
    job = Job.new(project_id="ceiling", source="/srv/repo", modules=("noop",), options=JobOptions(),
                  trace=TraceContext.new(), created_ns=at)
    return replace(job, id=_SENTINEL, status=JobStatus.QUEUED, status_ns=at, queued_ns=at, reason="enqueued")


def job_script(url: str) -> str:
    """The pgbench script of one job's statements (for ``-M prepared``)."""
    at = now_ns()
    result = ModuleResult(module="noop", version="1.0.0", outcome=ModuleOutcome.OK, started_ns=at, duration_ms=0.05,
                          expected_ms=1000.0, timeout_ms=30000.0, attempt=1, summary={})
    terminal = Transition(job_id=_CLAIMED, status_from=JobStatus.RUNNING, status_to=JobStatus.COMPLETED,
                          reason="all 1 modules completed", at_ns=at, duration_ms=1.0, attempt=1, new_attempt=1,
                          worker_id="pgbench-1-abcdef", results=(result,))
    claim = {"worker_id": "pgbench-1-abcdef", "now_ns": at, "expires_ns": at + 30 * 10**9, "limit": 1}
    with psycopg.connect(url) as conn:
        cur = psycopg.ClientCursor(conn)
        # The JSON columns are jsonb: mogrify quotes JSONText as text, which PostgreSQL
        # casts on insert, as the store's jsonb dumper would bind it.
        statements = [
            r"\set n random(100000000000, 999999999999)",
            _sql(cur, "insert_job", rows.job_params(_queued_job(at))) + ";",
            _sql(cur, "claim", claim) + r" \aset c_",
            # A sampled job's terminal transition carries its root span's emitter stamp and
            # returns the job's history (the root span is built from it), in one statement.
            _sql(cur, "apply_transition", {**rows.transition_params(terminal), "trace_emitter": "pgbench-emitter",
                                           "trace_seq": 12345, "with_history": True}) + ";",
        ]
    script = "\n".join(statements) + "\n"
    # The job id: a uuid-shaped text whose last group is the pgbench variable n; the
    # terminal transition applies to the job this client claimed.
    script = script.replace(f"'{_SENTINEL}'", "('01900000-0000-7000-8000-' || :n)")
    script = script.replace(f"'{_CLAIMED}'", ":c_id")
    assert _SENTINEL not in script
    assert _CLAIMED not in script
    return script


_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")


def pgbench_tps(url: str, *, clients: int, seconds: float, threads: int = 2) -> dict[str, Any]:
    """Run the job script with ``clients`` connections for ``seconds``; jobs' worth per second."""
    script = job_script(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
        path = Path(handle.name)
    try:
        proc = subprocess.run(
            [PGBENCH, "-n", "-M", "prepared", "-f", str(path), "-c", str(clients), "-j", str(min(threads, clients)),
             "-T", str(max(1, round(seconds))), "-d", url],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )
    finally:
        path.unlink(missing_ok=True)
    match = _TPS.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    failed = _FAILED.search(proc.stdout)
    return {"clients": clients, "tps": float(match[1]), "failed": int(failed[1]) if failed else 0}
