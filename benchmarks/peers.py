"""The same no-op job on the same PostgreSQL with two peers: procrastinate and pgqueuer.

Each peer gets a fresh database with its own schema, one worker process
(``python -m benchmarks.peers worker NAME URL CONCURRENCY``, printing ``ready``, stopping
on SIGTERM) and the benchmark's producer creating the jobs from the same number of
concurrent tasks as ours. A round is timed like ours: from the first enqueue to the last
completion as the database records it (procrastinate's ``succeeded`` event time,
pgqueuer's log row time).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

__all__ = ["PEERS", "install", "main", "peer_round", "versions"]

PEERS = ("procrastinate", "pgqueuer")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in PEERS}


# -- procrastinate ------------------------------------------------------------------------


def _procrastinate_app(url: str, pool: int) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def _procrastinate_worker(url: str, concurrency: int) -> None:
    app = _procrastinate_app(url, concurrency + 2)
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(concurrency=concurrency, wait=True, listen_notify=True, install_signal_handlers=True)


async def _procrastinate_produce(url: str, jobs: int, producers: int, tag: str) -> None:
    app = _procrastinate_app(url, producers)
    async with app.open_async():
        task = app.tasks["noop"].configure(queue=tag)
        remaining = jobs

        async def producer() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await task.defer_async()

        await asyncio.gather(*(producer() for _ in range(producers)))


_PROCRASTINATE_DONE = """
SELECT COUNT(*) FILTER (WHERE status NOT IN ('todo', 'doing')),
       COUNT(*) FILTER (WHERE status NOT IN ('todo', 'doing', 'succeeded')),
       (SELECT EXTRACT(EPOCH FROM MAX(e.at)) FROM procrastinate_events e
        JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.queue_name = %(tag)s AND e.type = 'succeeded')
FROM procrastinate_jobs WHERE queue_name = %(tag)s
"""


# -- pgqueuer -----------------------------------------------------------------------------


async def _pgqueuer_worker(url: str, concurrency: int) -> None:
    from pgqueuer import PgQueuer, PsycopgDriver
    from pgqueuer.models import Job

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    pgq = PgQueuer(PsycopgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, pgq.shutdown.set)
    print("ready", flush=True)
    # max_concurrent_tasks caps the jobs this worker holds at once (the same concurrency
    # as ours); pgqueuer requires a batch of at most half of it.
    await pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    await conn.close()


async def _pgqueuer_produce(url: str, jobs: int, producers: int, ids: list[int]) -> None:
    from pgqueuer import PsycopgDriver, Queries

    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(producers)]
    try:
        remaining = jobs

        async def producer(conn: psycopg.AsyncConnection[Any]) -> None:
            nonlocal remaining
            queries = Queries(PsycopgDriver(conn))
            while remaining > 0:
                remaining -= 1
                ids.extend(await queries.enqueue("noop", None))

        await asyncio.gather(*(producer(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()


_PGQUEUER_DONE = """
SELECT COUNT(*) FILTER (WHERE status = 'successful') + COUNT(*) FILTER (WHERE status <> 'successful'),
       COUNT(*) FILTER (WHERE status <> 'successful'),
       EXTRACT(EPOCH FROM MAX(created))
FROM pgqueuer_log WHERE job_id = ANY(%(ids)s) AND status IN ('successful', 'exception', 'canceled', 'deleted')
"""


# -- shared -------------------------------------------------------------------------------


async def install(name: str, url: str) -> None:
    """Install the peer's schema in an empty database."""
    if name == "procrastinate":
        app = _procrastinate_app(url, 2)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    else:
        from pgqueuer import PsycopgDriver, Queries

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Queries(PsycopgDriver(conn)).install()


def peer_round(
    name: str, url: str, *, jobs: int, producers: int, tag: str, check: Callable[[], None], timeout: float = 300.0
) -> tuple[float, float, int, float]:
    """Create ``jobs`` no-op jobs; (seconds to the last completion, seconds producing,
    failed, CPU seconds this process spent producing: measured as ours is)."""

    async def go() -> tuple[float, float, int, float]:
        ids: list[int] = []
        start_ns = time.time_ns()
        cpu_before = time.process_time()
        if name == "procrastinate":
            await _procrastinate_produce(url, jobs, producers, tag)
        else:
            await _pgqueuer_produce(url, jobs, producers, ids)
        produced_ns = time.time_ns()
        producer_cpu = time.process_time() - cpu_before
        query, params = (
            (_PROCRASTINATE_DONE, {"tag": tag}) if name == "procrastinate" else (_PGQUEUER_DONE, {"ids": ids})
        )
        deadline = time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
                assert row is not None
                done, failed, last = int(row[0] or 0), int(row[1] or 0), row[2]
                if done >= jobs and last is not None:
                    break
                check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: {done} of {jobs} jobs done after {timeout:.0f} s")
                await asyncio.sleep(0.02)
        return (float(last) * 1e9 - start_ns) / 1e9, (produced_ns - start_ns) / 1e9, failed, producer_cpu

    return asyncio.run(go())


def main() -> int:
    if len(sys.argv) != 5 or sys.argv[1] != "worker" or sys.argv[2] not in PEERS:
        print("usage: python -m benchmarks.peers worker procrastinate|pgqueuer URL CONCURRENCY", file=sys.stderr)
        return 2
    name, url, concurrency = sys.argv[2], sys.argv[3], int(sys.argv[4])
    worker = _procrastinate_worker if name == "procrastinate" else _pgqueuer_worker
    asyncio.run(worker(url, concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
