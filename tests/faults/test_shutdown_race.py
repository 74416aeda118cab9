"""Cancellation at the worst moment: a graceful shutdown (SIGTERM cancels the worker's
loops) that lands right after a terminal transition was committed, while the process
still reads the history to emit the job's root span. The transition stands in the
store, so its telemetry must not be lost: the root span is emitted exactly once.

(Found by the chaos runs: a reaper that failed a job with ``worker_lost`` and was
stopped by SIGTERM a moment later never exported the job's root span.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from telemetry_helpers import TelemetryHarness

from faults.helpers import figures
from orchestrator.domain import Job, JobOptions, JobStatus, LifecycleEntry, TraceContext, Transition
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.workflow import JobWorkflow


class SlowHistory(SQLiteJobStore):
    """Reading the history takes a while (a busy database): the window after the commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reading = anyio.Event()

    async def history(self, job_id: str) -> list[LifecycleEntry]:
        self.reading.set()
        await anyio.sleep(0.3)
        return await super().history(job_id)

    async def apply_with_history(self, transition: Transition) -> tuple[Job, list[LifecycleEntry]]:
        # The workflow reads the history in the terminal transition's own round trip:
        # the same window, between the commit and the return.
        applied = await super().apply_with_history(transition)
        self.reading.set()
        await anyio.sleep(0.3)
        return applied


@pytest.mark.parametrize("how", ["recover (reaper)", "finish (worker)"])
def test_a_cancel_right_after_the_terminal_commit_still_emits_the_root_span(
    tmp_path: Path, harness: TelemetryHarness, how: str
) -> None:
    outcome: dict[str, Any] = {}

    async def scenario() -> tuple[Job, Job]:
        store = SlowHistory(tmp_path / "jobs.db")
        await store.open()
        workflow = JobWorkflow(store, harness.telemetry)
        try:
            job = Job.new(
                project_id="race",
                source=str(tmp_path),
                modules=("noop",),
                options=JobOptions(),
                trace=TraceContext.new(),
            )
            job = await workflow.create(job)
            job = await workflow.transition(job, JobStatus.QUEUED, reason="enqueued")
            claimed = await workflow.claim("w1", lease_seconds=30)
            assert claimed is not None

            async def finish() -> None:
                try:
                    if how.startswith("recover"):
                        await workflow.recover(claimed, max_attempts=1, worker_id="reaper")
                    else:
                        await workflow.transition(claimed, JobStatus.COMPLETED, reason="done", worker_id="w1")
                    outcome["returned"] = True
                except anyio.get_cancelled_exc_class():
                    outcome["cancelled"] = True
                    raise

            with anyio.fail_after(15):  # a hang fails here, with a stack, not at the session timeout
                async with anyio.create_task_group() as tg:
                    tg.start_soon(finish)
                    await store.reading.wait()  # committed; reading the history for the root span
                    tg.cancel_scope.cancel()  # the shutdown lands now
            return job, await store.get(job.id)
        finally:
            await store.close()

    job, stored = anyio.run(scenario)
    roots = [s for s in harness.trace(job.trace.trace_id) if s.name == "job"]
    figures(
        f"shutdown right after the terminal commit ({how})",
        {"stored status": str(stored.status), "root spans": len(roots), "task": outcome},
    )
    assert stored.status.terminal
    assert len(roots) == 1, "the terminal transition was committed but its root span was lost"
