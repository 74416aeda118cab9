"""The ceiling: how many jobs' worth of our statements PostgreSQL commits per second here.

A pgbench custom script replays, per pgbench transaction, the statements one job costs
the store, generated from the store's own named queries and parameters (so the script
follows the product): insert the job and its creation history row (one transaction),
the Pending -> Queued transition (with its NOTIFY), the claim, and the terminal
transition with a one-module result. Values are bound client side (psycopg's
``ClientCursor.mogrify``); only the job id varies, as a pgbench parameter, and pgbench
runs with prepared statements, as psycopg does for statements a connection repeats.
(pgbench takes any ``:word`` for a variable, so JSON literals get a space after their
colons and the payload timestamp none: the values differ by a few bytes, not the work.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
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
from orchestrator.stores import postgres as pg_store
from orchestrator.stores import rows

__all__ = ["PGBENCH", "job_script", "pgbench_tps"]

PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
_SENTINEL = "BENCHJOBIDSENTINEL"


_JSON_COLON = re.compile(r'":(?=\S)')


def _sql(cur: psycopg.ClientCursor[Any], name: str, params: dict[str, Any]) -> str:
    text = cur.mogrify(pg_store._Q[name], params)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return _JSON_COLON.sub('": ', "\n".join(lines).strip().rstrip(";"))


def job_script(url: str) -> str:
    """The pgbench script of one job's statements (for ``-M prepared``)."""
    at = now_ns()
    job = Job.new(project_id="ceiling", source="/srv/repo", modules=("noop",), options=JobOptions(),
                  trace=TraceContext.new(), created_ns=at)
    job = Job(**{**{f: getattr(job, f) for f in job.__slots__}, "id": _SENTINEL})  # type: ignore[attr-defined]

    def transition(src: JobStatus, dst: JobStatus, **extra: Any) -> dict[str, Any]:
        t = Transition(job_id=_SENTINEL, status_from=src, status_to=dst, reason=extra.pop("reason"), at_ns=at,
                       duration_ms=1.0, attempt=1, new_attempt=1, **extra)
        params = _transition_params(t)
        params["notify"] = True
        params["timestamp"] = _stamp(at)
        # The terminal transition of a sampled job returns the history (the root span).
        params["with_history"] = dst.terminal
        return params

    result = ModuleResult(module="noop", version="1.0.0", outcome=ModuleOutcome.OK, started_ns=at, duration_ms=0.05,
                          expected_ms=1000.0, timeout_ms=30000.0, attempt=1, summary={})
    history = {"job_id": _SENTINEL, "status_from": None, "status_to": "pending", "reason": "created", "at_ns": at,
               "duration_ms": 0.0, "attempt": 1, "worker_id": None}
    claim = {"worker_id": "pgbench-1-abcdef", "now_ns": at, "expires_ns": at + 30 * 10**9, "timestamp": _stamp(at)}
    with psycopg.connect(url) as conn:
        cur = psycopg.ClientCursor(conn)
        if "create_job" in pg_store._Q:  # create and enqueue as one statement
            enqueue = transition(JobStatus.PENDING, JobStatus.QUEUED, reason="enqueued")
            params = {**pg_store.create_params(job, _as_transition(enqueue, at)), "notify": True,
                      "timestamp": _stamp(at)}
            create = [_sql(cur, "create_job", params) + ";"]
        else:
            create = [
                "BEGIN;",
                _sql(cur, "insert_job", rows.job_to_row(job)) + ";",
                _sql(cur, "insert_history", history) + ";",
                "COMMIT;",
                _sql(cur, "apply_transition", transition(JobStatus.PENDING, JobStatus.QUEUED, reason="enqueued")) + ";",
            ]
        statements = [
            r"\set n random(100000000000, 999999999999)",
            *create,
            _sql(cur, "claim", claim) + r" \aset c_",
            _sql(
                cur,
                "apply_transition",
                transition(JobStatus.RUNNING, JobStatus.COMPLETED, reason="all 1 modules completed",
                           results=(result,), worker_id="pgbench-1-abcdef"),
            ).replace(_SENTINEL, "CLAIMEDSENTINEL") + ";",
        ]
    script = "\n".join(statements) + "\n"
    # The job id: a uuid-shaped text whose last group is the pgbench variable n; the
    # terminal transition applies to the job this client claimed.
    script = script.replace(f"'{_SENTINEL}'", "('01900000-0000-7000-8000-' || :n)")
    script = script.replace("'CLAIMEDSENTINEL'", ":c_id")
    assert _SENTINEL not in script
    return script


def _stamp(ns: int) -> str:
    return rows.iso(ns).replace(":", "")


def _transition_params(t: Transition) -> dict[str, Any]:
    build = getattr(rows, "transition_params", None) or getattr(pg_store, "_transition_params")  # noqa: B009
    params: dict[str, Any] = build(t)
    return params


def _as_transition(params: dict[str, Any], at: int) -> Transition:
    return Transition(job_id=_SENTINEL, status_from=JobStatus.PENDING, status_to=JobStatus.QUEUED,
                      reason=params["reason"], at_ns=at, duration_ms=1.0, attempt=1, new_attempt=1)


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
