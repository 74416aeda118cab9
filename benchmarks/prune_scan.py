"""How long one prune round holds SQLite's write lock, with and without its index hint.

A prune round deletes up to 500 finished jobs (and their deliveries) in one write
transaction, choosing them by finish time. The store never runs ANALYZE, and without
statistics SQLite reads every finished job through ``jobs_status`` and sorts them; the
queries name ``jobs_finished`` instead (``INDEXED BY``). This fills a store with
``--jobs`` finished jobs and times the round's statements as shipped and with the hint
taken out, each inside ``BEGIN IMMEDIATE`` and rolled back, alternated.
Run: ``python -m benchmarks.prune_scan``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from orchestrator.stores import sql
from orchestrator.stores.sqlite import SQLiteJobStore

__all__ = ["main"]

_HINT = "INDEXED BY jobs_finished"


def _fill(path: Path, jobs: int) -> None:
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
            "queued_ns, started_ns, reason, trace_id, root_span_id, trace_sampled) "
            "VALUES (?, 'bench', '/', '[]', '{}', 'running', 1, ?, ?, ?, ?, 'claimed', 't', 's', 0)",
            ((f"{i:020d}", i, i, i, i) for i in range(jobs)),
        )
        conn.execute(
            "UPDATE jobs SET status = 'completed', status_ns = 1000000000 + created_ns, "
            "finished_ns = 1000000000 + created_ns, reason = 'completed'"
        )
        conn.execute("COMMIT")


def _round_ms(conn: sqlite3.Connection, statements: list[str], before_ns: int) -> float:
    params = {"before_ns": before_ns, "limit": 500}
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for statement in statements:
        conn.execute(statement, params).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    conn.execute("ROLLBACK")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    queries = sql.queries("sqlite")
    shipped = [queries["prune_deliveries"], queries["prune_jobs"]]
    assert all(_HINT in q for q in shipped), "the prune statements no longer name jobs_finished"
    unhinted = [q.replace(_HINT, "") for q in shipped]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.db"
        _fill(path, args.jobs)
        conn = sqlite3.connect(path, isolation_level=None)
        before_ns = 2 * 10**9 + args.jobs
        times: dict[str, list[float]] = {"shipped (INDEXED BY jobs_finished)": [], "without the hint": []}
        for _ in range(args.rounds):
            times["shipped (INDEXED BY jobs_finished)"].append(_round_ms(conn, shipped, before_ns))
            times["without the hint"].append(_round_ms(conn, unhinted, before_ns))
        conn.close()
    print(f"# one prune round (500 of {args.jobs} finished jobs), write lock held, median of {args.rounds}")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.1f} ms")


if __name__ == "__main__":
    main()
