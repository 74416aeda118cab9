"""How long the store's housekeeping statements hold SQLite's write lock at scale, and
how long a page of jobs takes to list.

The store never runs ANALYZE, and without statistics SQLite picks plans that read whole
tables: a prune round read every finished job through ``jobs_status`` and sorted them,
and deleted its deliveries by scanning the whole outbox; a webhook claim walked the
outbox in ``seq`` order, delivered rows included; a trace claim walked every job that
emitted a root span; a page of jobs walked the ids from the newest, whatever its
filter and bound; a listing of deliveries scanned the outbox. The statements now name
their index (``INDEXED BY``; a ``CROSS JOIN`` keeps the emitters first), deliveries are
indexed by job (migration 0007), jobs by error category and deliveries by subscription
(0008), and a page of jobs created since a moment starts at its first id.
This fills a store with ``--jobs`` finished jobs (one a millisecond) whose root spans
were all confirmed, four delivered webhook deliveries each and a few due pending ones,
then times each statement as shipped and as it was (the hints taken out, the indexes
dropped, the old listing queries), each round in one transaction, rolled back, the two
alternated.
Run: ``python -m benchmarks.sqlite_scale``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from orchestrator.domain.job import first_id_at, new_job_id
from orchestrator.stores import sql
from orchestrator.stores.sqlite import SQLiteJobStore

__all__ = ["main"]

_HINTS = ("INDEXED BY jobs_finished", "INDEXED BY webhook_deliveries_due", "CROSS JOIN")
_PENDING = 10
_NO_FILTER = {
    "status": None,
    "project_id": None,
    "error_category": None,
    "since_ns": None,
    "since_id": "",
    "after": None,
    "limit": 100,
}
_MS = 1_000_000
#: The indexes the shipped statements have that the old ones did not.
_NEW_INDEXES = ("webhook_deliveries_job", "jobs_error_category", "webhook_deliveries_subscription")


def _fill(path: Path, ids: list[str]) -> None:
    jobs = len(ids)

    async def create() -> None:
        store = SQLiteJobStore(path)
        await store.open()
        await store.close()

    anyio.run(create)
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        # Created running, then ended: the schema's triggers allow only legal transitions
        # (and write each job's history, as the store's own statements do).
        conn.executemany(
            "INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns, "
            "queued_ns, started_ns, reason, trace_id, root_span_id, trace_sampled, trace_emitter, trace_seq) "
            "VALUES (?, 'bench', '/', '[]', '{}', 'running', 1, ?, ?, ?, ?, 'claimed', 't', 's', 1, 'bench-worker', ?)",
            ((ids[i], i * _MS, i * _MS, i * _MS, i * _MS, i + 1) for i in range(jobs)),
        )
        conn.execute(
            "UPDATE jobs SET status = 'completed', status_ns = 1000000000 + created_ns, "
            "finished_ns = 1000000000 + created_ns, reason = 'completed'"
        )
        # Their root spans all confirmed exported: no trace is due for a rebuild.
        conn.execute(
            "INSERT INTO trace_emitters (emitter_id, confirmed_seq, advanced_ns, seen_ns) "
            "VALUES ('bench-worker', ?, 1, 1)",
            (jobs,),
        )
        conn.execute(
            "INSERT INTO webhook_subscriptions (id, project_id, url, secret, events, created_ns) "
            "VALUES ('bench-hook', 'bench', 'https://hooks.example.com/x', 'secret', '[]', 1)"
        )
        deliveries = jobs * 4
        conn.executemany(
            "INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, status, "
            "next_attempt_ns, created_ns, trace_id, root_span_id, trace_sampled, history_seq, status_from, status_to) "
            "VALUES (?, 'bench-hook', ?, 'bench', 'job.lifecycle.complete', '{}', ?, ?, ?, 't', 's', 0, 1, "
            "'running', 'completed')",
            (
                (f"d{i}", ids[i // 4], "delivered" if i < deliveries - _PENDING else "pending", i, i)
                for i in range(deliveries)
            ),
        )
        conn.execute("COMMIT")


#: How a page of jobs was listed before: every filter optional ("IS NULL OR"), which no
#: index can serve, so SQLite walked the ids from the newest (to the end when a page is
#: not filled).
_LIST_BEFORE = """SELECT * FROM jobs
WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:project_id AS TEXT) IS NULL OR project_id = :project_id)
  AND (CAST(:error_category AS TEXT) IS NULL OR error_category = :error_category)
  AND (CAST(:after AS TEXT) IS NULL OR id < :after)
  AND (CAST(:since_ns AS BIGINT) IS NULL OR created_ns >= :since_ns)
ORDER BY id DESC
LIMIT :limit"""

#: How deliveries were listed before: the first ones, every filter optional.
_DELIVERIES_BEFORE = """SELECT * FROM webhook_deliveries
WHERE (CAST(:job_id AS TEXT) IS NULL OR job_id = :job_id)
  AND (CAST(:subscription_id AS TEXT) IS NULL OR subscription_id = :subscription_id)
ORDER BY seq
LIMIT :limit"""


def _unhinted(statement: str) -> str:
    if statement.startswith("SELECT * FROM jobs WHERE") and "LIMIT :limit" in statement:
        return _LIST_BEFORE
    if ") AS latest" in statement:
        return _DELIVERIES_BEFORE
    for hint in _HINTS:
        statement = statement.replace(hint, "JOIN" if hint == "CROSS JOIN" else "")
    return statement


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    queries = sql.queries("sqlite")
    before_ns = 2 * 10**9 + args.jobs * _MS
    ids = [new_job_id(i * _MS) for i in range(args.jobs)]
    since_ns = (args.jobs - 10) * _MS  # the latest ten jobs: a page not filled
    cases: dict[str, tuple[list[str], dict[str, Any]]] = {
        "prune round (500 jobs, their deliveries)": (
            [queries["prune_deliveries"], queries["prune_jobs"]],
            {"before_ns": before_ns, "limit": 500},
        ),
        "webhook claim (10 due of the outbox)": (
            [queries["webhook_claim"]],
            {"owner": "bench", "expires_ns": 1, "now_ns": 10**15, "busy": "[]", "limit": 10},
        ),
        "trace claim (none due)": (
            [queries["trace_claim"]],
            {"owner": "bench", "now_ns": 10**15, "before_ns": 10**15, "expires_ns": 1, "limit": 50, "candidates": 200},
        ),
        "list the failed jobs (none among them)": (
            [queries["list_jobs_by_status"]],
            {**_NO_FILTER, "status": "failed"},
        ),
        "a page of completed jobs halfway down (report's paging)": (
            [queries["list_jobs_by_status"]],
            {**_NO_FILTER, "status": "completed", "after": ids[args.jobs // 2], "limit": 500},
        ),
        "list one error category (none among them)": (
            [queries["list_jobs_by_error_category"]],
            {**_NO_FILTER, "error_category": "module_timeout"},
        ),
        "list the jobs created since (the latest ten)": (
            [queries["list_jobs"]],
            {**_NO_FILTER, "since_ns": since_ns, "since_id": first_id_at(since_ns)},
        ),
        "a job's deliveries (webhooks deliveries --job-id)": (
            [queries["webhook_list_deliveries_by_job"]],
            {"job_id": ids[args.jobs // 2], "subscription_id": None, "limit": 100, "before": None},
        ),
        "a subscription's latest 100 deliveries": (
            [queries["webhook_list_deliveries_by_subscription"]],
            {"job_id": None, "subscription_id": "bench-hook", "limit": 100, "before": None},
        ),
        "delete one job (DELETE /v1/jobs/{id})": (
            [queries["delete_deliveries"], queries["delete_jobs"]],
            {"ids": f'["{ids[args.jobs // 2]}"]'},
        ),
    }
    shipped_text = "".join(s for statements, _ in cases.values() for s in statements)
    assert all(hint in shipped_text for hint in _HINTS), "a statement no longer names its index"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.db"
        _fill(path, ids)
        conn = sqlite3.connect(path, isolation_level=None)
        shipped: dict[str, list[float]] = {name: [] for name in cases}
        before: dict[str, list[float]] = {name: [] for name in cases}
        toggles: list[tuple[dict[str, list[float]], Callable[[str], str], bool]] = [
            (shipped, lambda s: s, True),
            (before, _unhinted, False),
        ]
        for _ in range(args.rounds):
            for into, rewrite, indexed in toggles:
                conn.execute("BEGIN")
                if not indexed:
                    for index in _NEW_INDEXES:
                        conn.execute(f"DROP INDEX {index}")  # rolled back below
                for name, (statements, params) in cases.items():
                    started = time.perf_counter()
                    for statement in statements:
                        conn.execute(rewrite(statement), params).fetchall()
                    into[name].append((time.perf_counter() - started) * 1000)
                conn.execute("ROLLBACK")
        conn.close()
    print(
        f"# time of each (a write's is time its write lock is held), {args.jobs} finished jobs and "
        f"{args.jobs * 4} deliveries, "
        f"median of {args.rounds} (ms)"
    )
    print("| statement | as shipped | before (no hint, no new index, the old list queries) |")
    print("|---|---:|---:|")
    for name in cases:
        print(f"| {name} | {statistics.median(shipped[name]):.2f} | {statistics.median(before[name]):.2f} |")


if __name__ == "__main__":
    main()
