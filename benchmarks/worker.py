"""A benchmark worker process: ``python -m benchmarks.worker``.

Configured from the environment exactly like ``orchestrator worker``: ``ORCHESTRATOR_*``
settings (database URL or data dir, concurrency, poll interval) and the standard
``OTEL_*`` variables through :func:`otel.setup.setup_telemetry`. Its registry holds the
benchmark modules (``noop``, ``work10``). It prints ``ready`` once the store is open and
runs until SIGTERM/SIGINT, then stops gracefully (running jobs finish) and flushes
telemetry.

``ORCHESTRATOR_LOG_LEVEL`` sets the project's loggers (default ``warning``); stderr only
ever shows warnings and errors, so a run at ``info`` exports the lifecycle records over
OTLP (or to the files) without formatting them on stderr. ``BENCH_CPROFILE=path`` writes a
cProfile of the whole run to ``path``; ``BENCH_TRACEMALLOC=folder`` writes heap snapshots
(``BENCH_TRACEMALLOC_EVERY`` seconds apart) for ``python -m benchmarks.heap``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path

import anyio

from benchmarks.modules import registry
from orchestrator import __version__
from orchestrator.bootstrap import open_app
from orchestrator.job_queue import Worker
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from otel.logs import configure_logging, log_thread_exceptions
from otel.setup import Telemetry, setup_telemetry

__all__ = ["main"]


async def _stop_on_signal(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            worker.stop()
            return


async def _run(settings: Settings, telemetry: Telemetry) -> None:
    job_telemetry = JobTelemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.sampler)
    async with open_app(settings, registry=registry(), telemetry=job_telemetry) as app:
        worker = app.worker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, worker)
            print(f"ready {os.getpid()} {telemetry.mode}", flush=True)
            await worker.run()
            tg.cancel_scope.cancel()
        # How the terminal transitions were grouped (stderr: the run's worker log).
        writes = getattr(app.store, "_terminal_writes", None)
        if writes is not None:
            print(f"terminal transitions: {writes.items} in {writes.groups} writes", file=sys.stderr, flush=True)
        print(f"claims: {worker.claimed} jobs in {worker.claims} statements", file=sys.stderr, flush=True)


def _snapshot_heap(folder: Path, every: float) -> None:
    """Trace allocations (``tracemalloc``, 12 frames) and write a snapshot of the live heap
    every ``every`` seconds, after a full collection, to ``folder/heap-NN.pickle``
    (``python -m benchmarks.heap`` reads them)."""
    import gc
    import pickle
    import threading
    import tracemalloc

    tracemalloc.start(12)
    folder.mkdir(parents=True, exist_ok=True)

    def take() -> None:
        for n in itertools.count():
            time.sleep(every)
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            with (folder / f"heap-{n:03d}.pickle").open("wb") as out:
                pickle.dump(snapshot, out)

    threading.Thread(target=take, name="bench-heap", daemon=True).start()


def main() -> int:
    settings = Settings()
    level = os.environ.get("ORCHESTRATOR_LOG_LEVEL", "warning").upper()
    stream = configure_logging(level, "json")
    log_thread_exceptions()
    stream.setLevel(logging.WARNING)
    telemetry = setup_telemetry(service_version=__version__, telemetry_dir=settings.telemetry_dir)
    heap_dir = os.environ.get("BENCH_TRACEMALLOC")
    if heap_dir:
        _snapshot_heap(Path(heap_dir), float(os.environ.get("BENCH_TRACEMALLOC_EVERY", "30")))
    profile_path = os.environ.get("BENCH_CPROFILE")
    try:
        if profile_path:
            import cProfile

            with cProfile.Profile() as profile:
                anyio.run(_run, settings, telemetry)
            profile.dump_stats(profile_path)
        else:
            anyio.run(_run, settings, telemetry)
    finally:
        telemetry.shutdown(timeout_s=5.0)
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
