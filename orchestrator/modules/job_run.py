"""One job's analysis, as the executor runs it: the shared file index and pass, the
modules' budgets, and their progress on its way to telemetry and listeners.

``ExecuteAnalysisJobUseCase`` opens one :class:`JobAnalysis` around a job's fan-out and
asks it for each module's context, budget and final numbers, so the use case itself
stays about statuses and outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from opentelemetry import trace

from orchestrator.modules.analysis import AnalysisConfig
from orchestrator.modules.base import AnalysisModule, ModuleContext
from orchestrator.modules.budget import Budget, JobBudgets
from orchestrator.modules.index import FileIndex
from orchestrator.modules.job_files import JobFiles
from orchestrator.modules.progress import ModuleProgress, ProgressListener, ProgressReporter
from orchestrator.modules.runners import BatchRunner

if TYPE_CHECKING:
    from orchestrator.domain import Job
    from orchestrator.telemetry import JobTelemetry

__all__ = ["WALK_DELAY_SECONDS", "JobAnalysis"]

log = logging.getLogger(__name__)

#: The walk starts this long after the job's modules do, unless a module asks for the
#: index first (then at once) or all of them have finished by then (then never). Such a
#: job keeps its unscaled budgets, which sizing could only have raised; what it saves is
#: the walk's hand-off to a thread and the cancel of its task, about a quarter of the
#: worker's CPU for a no-op job.
WALK_DELAY_SECONDS = 0.005


class JobAnalysis:
    """Use as ``async with JobAnalysis(...)`` around the job's modules (in its execute span)."""

    def __init__(
        self,
        job: Job,
        config: AnalysisConfig,
        runner: BatchRunner,
        telemetry: JobTelemetry,
        listeners: Sequence[ProgressListener] = (),
    ) -> None:
        self._job = job
        self._telemetry = telemetry
        self._listeners = listeners
        # A job's source was resolved when it was created (and, for API jobs, checked
        # against the source roots then): the walk refuses it if it now leads elsewhere.
        self.files = JobFiles(
            Path(job.source),
            config.index_config(job.options),
            runner,
            inline_bytes=config.inline_bytes,
            resolved=True,
        )
        self.budgets = JobBudgets(config.budgets, job.options.module_budgets)
        self._execute_span = trace.get_current_span()
        self._token: Any = None
        self._loop_thread = 0
        self._walk_timer: asyncio.TimerHandle | None = None
        #: Modules whose final progress update was sent: later ones are dropped.
        self._finished: set[str] = set()

    async def __aenter__(self) -> JobAnalysis:
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        await self.files.__aenter__()
        self.files.when_walked(self._sized)
        # While it walks, deadlines follow the files found so far (a huge tree is not
        # cut off by the unscaled timeout before it is sized).
        self.files.when_walking(lambda files: self.budgets.growing(files, 0))
        # Walked whatever the modules do (budgets scale with its size), unless they are all
        # done before WALK_DELAY_SECONDS.
        self._walk_timer = asyncio.get_running_loop().call_later(WALK_DELAY_SECONDS, self.files.start_walk)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._walk_timer is not None:
            self._walk_timer.cancel()
            self._walk_timer = None
        await self.files.__aexit__(*exc_info)

    def _sized(self, index: FileIndex) -> None:
        self.budgets.sized(len(index), index.total_bytes)
        self._telemetry.index_walked(self._execute_span, len(index), index.total_bytes, index.stats.ignored)

    # -- per module -------------------------------------------------------------------

    def context(self, module: str, span: trace.Span) -> ModuleContext:
        job = self._job
        return ModuleContext(
            job_id=job.id,
            project_id=job.project_id,
            source=Path(job.source),
            module=module,
            attempt=job.attempt,
            options=job.options.module_options.get(module, {}),
            job_files=self.files,
            progress_reporter=ProgressReporter(job.id, module, lambda update: self._deliver(span, update)),
        )

    def start(self, module: AnalysisModule, scope: anyio.CancelScope, context: ModuleContext) -> Budget:
        """``module`` starts under ``scope``: its deadline set, its budget in its context."""
        context.budget = self.budgets.start(module, scope)
        return context.budget

    def finish(self, module: AnalysisModule, context: ModuleContext, span: trace.Span) -> Budget:
        """``module`` has finished: its last progress, and the budget it ran under."""
        self._finished.add(module.name)
        if context.progress_reporter is not None:
            context.progress_reporter.finish()
        budget = self.budgets.finish(
            module, shared_with=self.files.members if module.name in self.files.members else ()
        )
        self._telemetry.module_budget(
            span, timeout_s=budget.timeout_s, expected_s=budget.expected_s, scale=self.budgets.scale
        )
        return budget

    # -- progress ---------------------------------------------------------------------

    def _deliver(self, span: trace.Span, update: ModuleProgress) -> None:
        """Hand an update to the event loop's thread (modules report from worker threads)."""
        if threading.get_ident() == self._loop_thread:
            self._publish(span, update)
            return
        # The loop may be gone (the job was abandoned): the update has nobody to go to.
        with contextlib.suppress(Exception):
            anyio.from_thread.run_sync(self._publish, span, update, token=self._token)

    def _publish(self, span: trace.Span, update: ModuleProgress) -> None:
        if update.module in self._finished and not update.final:
            return  # sent from a thread before the final one, arriving after it: too late
        self._telemetry.module_progress(span, update.done, update.total, milestone=update.milestone, final=update.final)
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:  # a broken listener must not fail a module
                log.exception("progress listener failed")
