"""Where a worker's CPU goes: ``python -m benchmarks.profile``.

Starts the sink, a fresh target and one benchmark worker in a telemetry mode, warms it
up, then records it with py-spy (``pip install py-spy``) while the benchmark's producer
(this process, same mode) creates ``--jobs`` no-op jobs. Prints the share of the
worker's (and, with ``--producer``, this process's) active samples spent under each
part of the stack that matters here (inclusive: a sample counts for every part on its
stack; only the thread holding the GIL is sampled, i.e. Python CPU) and the functions
with the most samples of their own; writes the collapsed
stacks next to the JSON results (``benchmarks/results/profile-<mode>-<backend>.txt``,
loadable in speedscope or ``flamegraph.pl``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.harness import (
    MODES,
    WORKER_ENV,
    Mode,
    Proc,
    ProducerTelemetry,
    RoundSpec,
    clean_env,
    interrupt_on_sigterm,
    ours_round,
    parse_worker_env,
    postgres_target,
    python_m,
    running,
    sqlite_target,
    start_workers,
)
from otel.logs import configure_logging

__all__ = ["PARTS", "main", "summarise"]

RESULTS = Path(__file__).resolve().parent / "results"

#: Parts of the stack, by a pattern of their frames (``function (file:line)``).
PARTS: dict[str, str] = {
    "OTLP encoding (spans, logs, metrics)": r"opentelemetry/exporter/otlp/proto/common/|otel/otlp_proto\.py|"
    r"SerializeToString|SerializePartialToString",
    "OTLP HTTP send (requests, gzip)": r"opentelemetry/exporter/otlp/common/http\.py|/requests/|/urllib3/",
    "export threads (batch processors, all of the above)": r"opentelemetry/sdk/_shared_internal",
    "log path (logging -> OTLP log records)": r"/logging/__init__\.py|opentelemetry/instrumentation/logging/|"
    r"otel/logs\.py|opentelemetry/sdk/_logs/_internal/__init__",
    "span creation and ending": r"opentelemetry/sdk/trace/__init__\.py",
    "metric recording": r"opentelemetry/sdk/metrics/_internal/(instrument|measurement_consumer|"
    r"_view_instrument_match|aggregation)",
    "metric collection and export": r"opentelemetry/sdk/metrics/_internal/export/",
    "orchestrator.telemetry": r"orchestrator/telemetry\.py",
    "psycopg (PostgreSQL driver)": r"/psycopg/|/psycopg_pool/",
    "sqlite connector": r"orchestrator/stores/sqlite\.py",
    "store core and rows": r"orchestrator/stores/(core|rows)\.py",
    "job's index walk (shared analysis)": r"orchestrator/modules/(job_files|index|files|scan|ignore|runners)\.py",
    "event loop (asyncio selector, anyio)": r"/asyncio/(base_events|selector_events|events)\.py|/anyio/",
}


def summarise(stacks: dict[str, int]) -> tuple[int, dict[str, float], list[tuple[str, float]]]:
    """(samples, share of samples per part, top 25 functions by samples of their own)."""
    total = sum(stacks.values())
    parts = {name: re.compile(pattern) for name, pattern in PARTS.items()}
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        for name, pattern in parts.items():
            if pattern.search(stack):
                inclusive[name] += count
        own[_short(stack.rsplit(";", 1)[-1])] += count
    shares = {name: inclusive[name] / total if total else 0.0 for name in PARTS}
    top = [(fn, n / total) for fn, n in own.most_common(25)] if total else []
    return total, shares, top


def _short(frame: str) -> str:
    """``function (package/module.py)``: the path from its top-level package, no line."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\((?:.*/(?:site-packages|lib/python3\.\d+|main)/)", "(", frame)


def read_collapsed(path: Path) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


@contextlib.contextmanager
def recording(pid: int, out: Path, rate: int) -> Iterator[None]:
    """py-spy recording ``pid`` (idle threads left out) until the block ends."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--full-filenames", "--format", "raw",
         "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the round starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(label: str, stacks: dict[str, int]) -> str:
    total, shares, top = summarise(stacks)
    lines = [f"## {label}: {total} active samples", "", "| part of the stack | share of samples |", "|---|---:|"]
    lines += [f"| {name} | {share:.0%} |" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])]
    lines += ["", "| function (own samples) | share |", "|---|---:|"]
    lines += [f"| `{fn}` | {share:.1%} |" for fn, share in top]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--mode", choices=MODES, default="otlp")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--producer", action="store_true", help="also profile the producer (this process)")
    parser.add_argument("--worker-env", nargs="+", default=[], metavar="NAME=VALUE",
                        help="ORCHESTRATOR_* settings for the worker")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    WORKER_ENV.update(parse_worker_env(args.worker_env))
    configure_logging("WARNING", "json")
    mode: Mode = args.mode
    log_dir = RESULTS / "logs" / time.strftime("profile-%Y%m%d-%H%M%S")
    sink = Proc("sink", python_m("benchmarks.sink"), clean_env(), log_dir)
    factory = postgres_target if args.backend == "postgresql" else sqlite_target
    outputs = {"worker": RESULTS / f"profile-{mode}-{args.backend}.txt",
               "producer": RESULTS / f"profile-{mode}-{args.backend}-producer.txt"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with running([sink]):
        endpoint = f"http://127.0.0.1:{int(sink.wait_line('port').split()[1])}"
        with factory() as target:
            procs = start_workers(target, 1, concurrency=args.concurrency, mode=mode, endpoint=endpoint,
                                  log_dir=log_dir, tag="profile")
            with running(procs):
                with ProducerTelemetry(mode, endpoint, target.workdir / "producer-telemetry") as telemetry:
                    ours_round(target, telemetry, RoundSpec(jobs=max(50, args.jobs // 10)), procs)
                with contextlib.ExitStack() as stack, ProducerTelemetry(
                    mode, endpoint, target.workdir / "producer-telemetry"
                ) as telemetry:
                    stack.enter_context(recording(procs[0].pid, outputs["worker"], args.rate))
                    if args.producer:
                        stack.enter_context(recording(os.getpid(), outputs["producer"], args.rate))
                    result = ours_round(target, telemetry, RoundSpec(jobs=args.jobs), procs)
    print(f"# {args.backend}, {mode}, {args.jobs} no-op jobs: {result.throughput:.0f} jobs/s, worker CPU "
          f"{result.worker_cpu_ms:.2f} ms/job, producer CPU {result.producer_cpu_ms:.2f} ms/job"
          + (f", PostgreSQL CPU {result.server_cpu_ms:.2f} ms/job" if result.server_cpu_ms is not None else "")
          + "\n")
    print(report("worker", read_collapsed(outputs["worker"])))
    if args.producer:
        print()
        print(report("producer", read_collapsed(outputs["producer"])))
    print(f"\ncollapsed stacks: {', '.join(str(p) for p in outputs.values() if p.exists())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
