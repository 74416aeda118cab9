"""The analysis-module interface.

A module is a small object with a name, a version, an expected runtime (exceeding
it is a warning, counted), a hard timeout (a failure) and ``async run(context)``
returning a JSON-serialisable summary. Raise :class:`ModuleError` for failures the
module understands (a malformed manifest); anything else it raises is a panic,
caught and reported, never a crash.

Blocking work goes through :meth:`ModuleContext.run_sync`, which runs it in a daemon
thread; long loops should call :meth:`ModuleContext.check_cancelled` so a cancelled
or timed-out module stops promptly.

Modules that read the project's files use the job's shared file index instead of
walking on their own: :meth:`ModuleContext.index` (one walk per job, with the skip and
ignore rules applied) and :meth:`ModuleContext.scan` (a :class:`FileAnalyzer` run over
the files in worker processes, each file read once for all the job's modules, progress
reported for you). :meth:`ModuleContext.progress` reports progress of other work.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from orchestrator.domain import ModuleError
from orchestrator.modules.budget import Budget
from orchestrator.modules.index import FileIndex, UnusableSource
from orchestrator.modules.runners import run_in_daemon_thread
from orchestrator.modules.scan import FileAnalyzer

if TYPE_CHECKING:
    from orchestrator.modules.job_files import JobFiles, ScanResult
    from orchestrator.modules.progress import ProgressReporter

__all__ = [
    "AnalysisModule",
    "BaseModule",
    "FileAnalyzer",
    "ModuleCancelled",
    "ModuleContext",
    "ModuleError",
    "ModuleSummary",
]

T = TypeVar("T")
R = TypeVar("R")
ModuleSummary = Mapping[str, Any]


class ModuleCancelled(Exception):
    """Raised by :meth:`ModuleContext.check_cancelled` inside a worker thread."""


@runtime_checkable
class AnalysisModule(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def expected_runtime(self) -> float:
        """Seconds; a run longer than this is an overrun (a warning and a counter)."""

    @property
    def timeout(self) -> float:
        """Seconds; a run longer than this is cancelled and fails with module_timeout."""

    @property
    def description(self) -> str: ...

    async def run(self, context: ModuleContext) -> ModuleSummary: ...


class BaseModule(abc.ABC):
    """Convenience base class: declare the attributes, implement ``run``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1.0.0"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = ""
    #: The keys of ``context.options`` this module reads: a job giving it any other is
    #: refused at creation (422 naming the field). None (the default): not declared, every
    #: key is accepted and passed on.
    option_names: ClassVar[frozenset[str] | None] = None

    @abc.abstractmethod
    async def run(self, context: ModuleContext) -> ModuleSummary:
        """Analyse ``context.source`` and return a JSON-serialisable summary."""


_MODULES_LOGGER = logging.getLogger("orchestrator.modules")


@dataclass
class ModuleContext:
    job_id: str
    project_id: str
    source: Path
    module: str
    attempt: int
    options: Mapping[str, Any] = field(default_factory=dict)
    logger: logging.Logger = _MODULES_LOGGER
    #: This run's timeout and expected runtime (scaled to the tree once it is walked).
    budget: Budget | None = None
    #: The job's shared index and pass; None outside a job (a private one is used).
    job_files: JobFiles | None = field(default=None, repr=False)
    progress_reporter: ProgressReporter | None = field(default=None, repr=False)
    #: Set by :meth:`cancel` from the event loop, read by a module's threads (a flag
    #: nothing waits on: one attribute, no lock and condition per context).
    _cancelled: bool = field(default=False, repr=False)

    def check_cancelled(self) -> None:
        """Raise :class:`ModuleCancelled` if the module was cancelled (call it in loops)."""
        if self._cancelled:
            raise ModuleCancelled(self.module)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in a daemon thread (context fields go with it).

        If the module is cancelled meanwhile, the thread is asked to stop through
        :meth:`check_cancelled` and the await returns at once. A thread that never
        returns (a read that blocks forever) is abandoned: being a daemon thread, it
        never keeps the process from exiting.
        """
        try:
            return await run_in_daemon_thread(fn, *args, name=f"module:{self.module}", on_cancel=self.cancel)
        except ModuleCancelled as exc:
            raise ModuleError(f"{self.module} was cancelled", module=self.module) from exc

    def progress(self, done: int, total: int | None = None) -> None:
        """Report progress: ``done`` of ``total`` units (files, for file work). Call it as
        often as you like, from any thread; updates are throttled before anyone sees
        them. :meth:`scan` reports for you."""
        if self.progress_reporter is not None:
            self.progress_reporter.report(done, total)

    def _refuse_if_cancelled(self) -> None:
        if self.cancelled:
            raise ModuleError(f"{self.module} was cancelled", module=self.module)

    async def index(self) -> FileIndex:
        """The job's file index: the source walked once for all the job's modules
        (symlinks not followed, special files, pseudo-filesystems and ignored paths left
        out). Raises :class:`ModuleError` when the source cannot be analysed."""
        self._refuse_if_cancelled()
        try:
            if self.job_files is not None:
                return await self.job_files.index()
            from orchestrator.modules.job_files import JobFiles

            async with JobFiles(self.source) as files:
                return await files.index()
        except UnusableSource as exc:
            raise ModuleError(str(exc), module=self.module) from None

    async def scan(self, analyzer: FileAnalyzer[R]) -> ScanResult[R]:
        """Run ``analyzer`` over the files it selects, in worker processes, each file
        read once for all the job's modules; progress is reported as batches finish."""
        from orchestrator.modules.job_files import JobFiles

        self._refuse_if_cancelled()
        try:
            if self.job_files is not None:
                return await self.job_files.scan(analyzer, self.progress, module=self.module)
            async with JobFiles(self.source) as files:
                return await files.scan(analyzer, self.progress, module=self.module)
        except UnusableSource as exc:
            raise ModuleError(str(exc), module=self.module) from None
