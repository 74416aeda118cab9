"""Does NOTIFY on every enqueue cost throughput under concurrent writes?

PostgreSQL serialises the commits of transactions that sent a notification (a global
lock on the notification queue at commit). This scenario enqueues jobs from many
concurrent connections with and without the ``pg_notify`` of the enqueue statement
and compares the enqueue rates. Run: ``python -m benchmarks.notify_cost``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import anyio

from benchmarks.pg import fresh_database
from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext, now_ns
from orchestrator.stores.postgres import PostgresJobStore

__all__ = ["enqueue_rate", "main"]


async def enqueue_rate(url: str, *, notify: bool, writers: int, seconds: float) -> float:
    """Jobs enqueued per second by ``writers`` tasks (each one ``insert_job`` of a Queued
    job, as ``JobWorkflow.create(enqueue=True)`` writes it: one statement)."""
    store = PostgresJobStore(url, min_size=writers, max_size=writers, notify=notify)
    await store.open()
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            job = Job.new(project_id="bench", source="/", modules=("noop",), options=JobOptions(),
                          trace=TraceContext.new())
            at = now_ns()
            await store.insert(replace(job, status=JobStatus.QUEUED, status_ns=at, queued_ns=at, reason="enqueued"))
            done += 1

    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(writers):
                tg.start_soon(writer)
        return done / (time.perf_counter() - started)
    finally:
        await store.close()


def run(writers: int, seconds: float, repeats: int) -> dict[str, float]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    with fresh_database() as url:
        for _ in range(repeats):
            for notify in (False, True):  # interleaved, so drift hits both alike
                rates[notify].append(anyio.run(lambda n=notify: enqueue_rate(url, notify=n, writers=writers,
                                                                          seconds=seconds)))
    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    return {"writers": writers, "without_notify": without, "with_notify": with_, "ratio": with_ / without}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'writers':>8} {'no notify/s':>12} {'notify/s':>10} {'ratio':>6}")
    for writers in args.writers:
        r = run(writers, args.seconds, args.repeats)
        print(f"{writers:>8} {r['without_notify']:>12.0f} {r['with_notify']:>10.0f} {r['ratio']:>6.2f}")


if __name__ == "__main__":
    main()
