"""The CPU one no-op job's telemetry costs, in one process, without a database:
``python -m benchmarks.telemetry_cpu``.

Replays the telemetry calls the product makes for a job of one no-op module (the
producer's create span, creation and enqueue records; the worker's claim, execute and
module spans, records and metric points, the finalize span, the terminal transition and
the root span from the history) on ``JobTelemetry`` configured as a worker configures it
(``setup_telemetry``: OTLP/HTTP to the benchmark's sink, or the embedded files), then
flushes every provider. The process's CPU time (all threads: export and encoding
included) per job, minus the same replay with telemetry off, is the telemetry's cost
per job. On a shared machine this moves far less than throughput does.

Variants put back what an optimisation replaced, to show what each one saves:
``--official-encoder`` (the SDK's protobuf encoding instead of otel/otlp_proto.py),
``--sync-metrics`` (the SDK's synchronous instruments instead of tallies, histograms included).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from opentelemetry import trace

from benchmarks.harness import Mode, ProducerTelemetry, clean_env
from orchestrator.domain import (
    Job,
    JobOptions,
    JobStatus,
    LifecycleEntry,
    ModuleOutcome,
    ModuleResult,
    Transition,
    now_ns,
)
from orchestrator.domain.events import LifecycleEvent
from orchestrator.telemetry import JobTelemetry
from otel import context
from otel.vocabulary import SpanName

__all__ = ["measure", "replay_job"]

WORKER_ID = "bench-host:1:abcdef"


def _transition(job: Job, to: JobStatus, reason: str, *, worker_id: str | None = None) -> Transition:
    at = now_ns()
    return Transition(job_id=job.id, status_from=job.status, status_to=to, reason=reason, at_ns=at,
                      duration_ms=max(0.0, (at - job.status_ns) / 1e6), attempt=job.attempt,
                      new_attempt=job.attempt, worker_id=worker_id)


def _entered(job: Job, t: Transition) -> Job:
    return replace(job, status=t.status_to, status_ns=t.at_ns, reason=t.reason, worker_id=t.worker_id,
                   queued_ns=t.at_ns if t.status_to is JobStatus.QUEUED else job.queued_ns,
                   started_ns=t.at_ns if t.status_to is JobStatus.RUNNING else job.started_ns,
                   finished_ns=t.at_ns if t.status_to.terminal else job.finished_ns)


def _entry(job: Job, seq: int, t: Transition | None) -> LifecycleEntry:
    if t is None:
        return LifecycleEntry(job_id=job.id, seq=seq, status_from=None, status_to=JobStatus.PENDING,
                              reason="created", at_ns=job.created_ns, duration_ms=0.0, attempt=1, worker_id=None,
                              event=LifecycleEvent.CREATE)
    return LifecycleEntry(job_id=job.id, seq=seq, status_from=t.status_from, status_to=t.status_to, reason=t.reason,
                          at_ns=t.at_ns, duration_ms=t.duration_ms, attempt=t.new_attempt, worker_id=t.worker_id,
                          event=None)


def replay_job(producer: JobTelemetry, worker: JobTelemetry) -> None:
    """The telemetry calls of one job of one no-op module, in the product's order."""
    # The producer: CreateAnalysisJobUseCase + JobWorkflow.create(enqueue=True).
    job = Job.new(project_id="bench", source="/srv/bench", modules=("noop",), options=JobOptions(),
                  trace=producer.new_trace())
    with producer.phase(job, SpanName.CREATE, start_ns=job.created_ns):
        enqueue = _transition(job, JobStatus.QUEUED, "enqueued")
        queued = _entered(job, enqueue)
        producer.created(job)
        producer.transitioned(job, queued, enqueue)
    # The worker: claim, run the module, finalize.
    with context.bound(worker_id=WORKER_ID):
        claim = _transition(queued, JobStatus.RUNNING, "claimed", worker_id=WORKER_ID)
        running = _entered(queued, claim)
        worker.transitioned(queued, running, claim)
        worker.active_jobs(1)
        with context.bound(**running.log_fields()):
            with worker.phase(running, SpanName.EXECUTE, attempt=1, worker_id=WORKER_ID, module_count=1) as execute:
                worker.index_walked(execute, 1, 300, 0)
                with context.bound(module="noop"):
                    span = worker.module_started(running, "noop", "1.0.0", 1.0)
                    with trace.use_span(span, end_on_exit=False):
                        started = now_ns()
                        worker.module_budget(span, timeout_s=30.0, expected_s=1.0, scale=None)
                        worker.module_expected_runtime("noop", 1.0)
                        result = ModuleResult(module="noop", version="1.0.0", outcome=ModuleOutcome.OK,
                                              started_ns=started, duration_ms=(now_ns() - started) / 1e6,
                                              expected_ms=1000.0, timeout_ms=30000.0, attempt=1, summary={})
                        worker.module_finished(running, span, result, None)
                    worker.fanout(running, done=1, failed=0, cancelled=0, total=1, final=False)
                worker.fanout(running, done=1, failed=0, cancelled=0, total=1, final=True)
            with worker.phase(running, SpanName.FINALIZE) as finalize:
                finalize.set_attribute("status_to", str(JobStatus.COMPLETED))
                complete = _transition(running, JobStatus.COMPLETED, "all 1 modules completed", worker_id=WORKER_ID)
                completed = replace(_entered(running, complete), results=(result,))
                history = [_entry(job, 1, None), _entry(job, 2, enqueue), _entry(job, 3, claim),
                           _entry(job, 4, complete)]
                worker.transitioned(running, completed, complete)
                worker.finished(completed, history)
        worker.active_jobs(-1)


@contextlib.contextmanager
def _variant(official_encoder: bool, sync_metrics: bool) -> Iterator[None]:
    import orchestrator.telemetry as job_telemetry
    from otel import otlp_proto

    saved = (otlp_proto.serialize_spans, otlp_proto.serialize_logs, job_telemetry.TALLIED, job_telemetry.board_for)
    if official_encoder:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        otlp_proto.serialize_spans = lambda spans: encode_spans(spans).SerializePartialToString()  # type: ignore[assignment]
        otlp_proto.serialize_logs = lambda batch: encode_logs(batch).SerializeToString()  # type: ignore[assignment]
    if sync_metrics:
        job_telemetry.TALLIED = frozenset()  # type: ignore[misc]
        job_telemetry.board_for = lambda provider: None  # histograms through the SDK too
    try:
        yield
    finally:
        (otlp_proto.serialize_spans, otlp_proto.serialize_logs, job_telemetry.TALLIED,  # type: ignore[misc]
         job_telemetry.board_for) = saved


def _cpu_per_job(mode: Mode, endpoint: str | None, jobs: int, workdir: Path) -> float:
    """CPU seconds per job of the replay in one mode (export flushed and included)."""
    with ProducerTelemetry(mode, endpoint, workdir / f"telemetry-{mode}") as telemetry:
        job_telemetry = telemetry.job  # with telemetry off: the no-op providers
        for _ in range(20):  # warm: caches, lazily built objects
            replay_job(job_telemetry, job_telemetry)
        telemetry.telemetry.flush(30.0)
        started = time.process_time()
        for _ in range(jobs):
            replay_job(job_telemetry, job_telemetry)
        telemetry.telemetry.flush(30.0)
        return (time.process_time() - started) / jobs


def measure(mode: Mode, endpoint: str | None, *, jobs: int = 2000, repeats: int = 3,
            official_encoder: bool = False, sync_metrics: bool = False) -> dict[str, Any]:
    """Telemetry CPU per job (ms) of ``mode`` over telemetry off, interleaved ``repeats`` times."""
    costs, offs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-cpu-") as tmp:
        for _ in range(repeats):
            off = _cpu_per_job("disabled", None, jobs, Path(tmp))
            with _variant(official_encoder, sync_metrics):
                on = _cpu_per_job(mode, endpoint, jobs, Path(tmp))
            offs.append(off * 1000)
            costs.append((on - off) * 1000)
    return {"ms_per_job": costs, "off_ms_per_job": offs, "median_ms": statistics.median(costs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("otlp", "files"), default="otlp")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official-encoder", action="store_true")
    parser.add_argument("--sync-metrics", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    from benchmarks.harness import Proc, python_m, running

    log_dir = Path(tempfile.mkdtemp(prefix="bench-telemetry-cpu-logs-"))
    sink = Proc("sink", python_m("benchmarks.sink"), clean_env(), log_dir)
    with running([sink]):
        endpoint = f"http://127.0.0.1:{int(sink.wait_line('port').split()[1])}"
        result = measure(args.mode, endpoint, jobs=args.jobs, repeats=args.repeats,
                         official_encoder=args.official_encoder, sync_metrics=args.sync_metrics)
    values = ", ".join(f"{v:.3f}" for v in result["ms_per_job"])
    print(f"telemetry CPU per job ({args.mode}): {result['median_ms']:.3f} ms (runs: {values}); "
          f"the same calls with telemetry off: {statistics.median(result['off_ms_per_job']):.3f} ms; "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
