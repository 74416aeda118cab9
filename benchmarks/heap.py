"""What stays on a worker's heap over a long run: ``python -m benchmarks.heap``.

RSS (the ``memory`` scenario) counts what the allocator holds; this counts what Python
still references. One benchmark worker (PostgreSQL, full telemetry over OTLP, to the sink
or, with ``--collector down``, to a port that refuses connections) runs ``--jobs`` no-op
jobs with ``tracemalloc`` on (12 frames, which slows it down several times) and writes a
snapshot of its live heap every ``--every`` seconds after a full collection. Prints the
traced total of each snapshot, then the allocation sites that grew most between the
first snapshot taken after ``--settle`` of the run and the last one: a leak is a site
that keeps growing; a bounded cache shows as a sawtooth.
"""

from __future__ import annotations

import argparse
import pickle
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import (
    WORKER_ENV,
    Proc,
    ProducerTelemetry,
    RoundSpec,
    clean_env,
    interrupt_on_sigterm,
    ours_round,
    postgres_target,
    python_m,
    running,
    start_workers,
)


def _closed_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def report(folder: Path, settle: float, top: int = 12) -> None:
    paths = sorted(folder.glob("heap-*.pickle"))
    if len(paths) < 2:
        print(f"{len(paths)} snapshot(s): the run was shorter than two snapshot intervals")
        return
    totals = []
    for path in paths:
        with path.open("rb") as f:
            snapshot: tracemalloc.Snapshot = pickle.load(f)
        totals.append((path, sum(stat.size for stat in snapshot.statistics("filename"))))
    print("| snapshot | traced heap |\n|---|---:|")
    for path, size in totals:
        print(f"| {path.stem} | {size / 1048576:.2f} MiB |")
    first = paths[min(len(paths) - 2, int(len(paths) * settle))]
    with first.open("rb") as f:
        before: tracemalloc.Snapshot = pickle.load(f)
    with paths[-1].open("rb") as f:
        after: tracemalloc.Snapshot = pickle.load(f)
    print(f"\nlargest changes {first.stem} -> {paths[-1].stem} (by allocation site):\n")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} objects  {frame.filename}:{frame.lineno}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between snapshots")
    parser.add_argument("--collector", choices=("up", "down"), default="down")
    parser.add_argument("--settle", type=float, default=0.25,
                        help="share of the snapshots left out before comparing (the queues fill)")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="bench-heap-"))
    log_dir = folder / "logs"
    log_dir.mkdir()
    sink = Proc("sink", python_m("benchmarks.sink"), clean_env(), log_dir)
    with running([sink]):
        up = f"http://127.0.0.1:{int(sink.wait_line('port').split()[1])}"
        endpoint = up if args.collector == "up" else _closed_endpoint()
        WORKER_ENV.update({"BENCH_TRACEMALLOC": str(folder), "BENCH_TRACEMALLOC_EVERY": str(args.every)})
        with postgres_target() as target:
            procs = start_workers(target, 1, concurrency=4, mode="otlp", endpoint=endpoint, log_dir=log_dir,
                                  tag="heap")
            with running(procs), ProducerTelemetry("otlp", endpoint, target.workdir / "producer") as telemetry:
                started = time.monotonic()
                result = ours_round(target, telemetry, RoundSpec(jobs=args.jobs, timeout=args.jobs), procs)
                time.sleep(args.every)  # one more snapshot after the last job
    print(f"# {args.jobs} no-op jobs, collector {args.collector}: {result.throughput:.0f} jobs/s under tracemalloc, "
          f"{time.monotonic() - started:.0f} s; snapshots in {folder}\n")
    report(folder, args.settle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
