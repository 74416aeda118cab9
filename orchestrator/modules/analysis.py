"""How a worker runs analysis: its process pool, what the walk leaves out, the budgets.

:class:`AnalysisConfig` is built once from the settings (``bootstrap``) and handed to
``ExecuteAnalysisJobUseCase``, which refines it per job with the job's options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from orchestrator.modules.budget import BudgetPolicy
from orchestrator.modules.index import IndexConfig
from orchestrator.modules.runners import BatchRunner, ProcessRunner, ThreadRunner

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = ["AnalysisConfig", "JobFileOptions", "default_processes"]


def default_processes() -> int:
    """The cores this process may use (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class JobFileOptions(Protocol):
    """The part of a job's options that refines the walk (``JobOptions``)."""

    @property
    def ignore(self) -> Sequence[str]: ...

    @property
    def default_ignores(self) -> bool: ...

    @property
    def gitignore(self) -> bool | None: ...


@dataclass(frozen=True)
class AnalysisConfig:
    #: Worker processes for CPU-bound module work; None: one per core; 0: none (a daemon
    #: thread). The settings default to one per core; a use case built without them
    #: (unit tests) runs in this process.
    processes: int | None = 0
    #: The walk's defaults (ignore patterns, .gitignore, the size cap).
    index: IndexConfig = field(default_factory=IndexConfig)
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)
    #: Trees up to this many bytes (and 1,000 files) are scanned in a thread of the job's
    #: process, without the pool: its processes would cost more to start than they save.
    inline_bytes: int = 2_000_000

    @property
    def process_count(self) -> int:
        return default_processes() if self.processes is None else self.processes

    def runner(self) -> BatchRunner:
        count = self.process_count
        return ProcessRunner(count) if count > 0 else ThreadRunner()

    def index_config(self, options: JobFileOptions | None) -> IndexConfig:
        """The walk of one job: the worker's defaults, refined by the job's options."""
        if options is None:
            return self.index
        gitignore = self.index.gitignore if options.gitignore is None else options.gitignore
        return replace(
            self.index,
            extra_ignore=tuple(options.ignore),
            default_ignores=options.default_ignores,
            gitignore=gitignore,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AnalysisConfig:
        return cls.from_values(
            processes=settings.analysis_processes,
            ignore=settings.analysis_ignore,
            gitignore=settings.analysis_gitignore,
            max_file_bytes=settings.analysis_max_file_bytes,
            timeouts=settings.module_timeouts,
            expected=settings.module_expected,
            reference_files=settings.budget_reference_files,
            reference_bytes=settings.budget_reference_bytes,
            inline_bytes=settings.analysis_inline_bytes,
        )

    @classmethod
    def from_values(
        cls,
        *,
        processes: int | None,
        ignore: Sequence[str] | None,
        gitignore: bool,
        max_file_bytes: int,
        timeouts: Mapping[str, float],
        expected: Mapping[str, float],
        reference_files: int,
        reference_bytes: int,
        inline_bytes: int = 2_000_000,
    ) -> AnalysisConfig:
        index = IndexConfig(gitignore=gitignore, max_file_bytes=max_file_bytes)
        if ignore is not None:
            index = replace(index, ignore=tuple(ignore))
        policy = BudgetPolicy(dict(timeouts), dict(expected), reference_files, reference_bytes)
        return cls(processes, index, policy, inline_bytes)
