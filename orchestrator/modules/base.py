"""The analysis-module interface.

A module is a small object with a name, a version, an expected runtime (exceeding
it is a warning, counted), a hard timeout (a failure) and ``async run(context)``
returning a JSON-serialisable summary. Raise :class:`ModuleError` for failures the
module understands (a malformed manifest); anything else it raises is a panic,
caught and reported, never a crash.

CPU-bound work goes through :meth:`ModuleContext.run_sync`, which runs it in a
worker thread; long loops should call :meth:`ModuleContext.check_cancelled` so a
cancelled or timed-out module stops promptly.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread

from orchestrator.domain import ModuleError

__all__ = ["AnalysisModule", "BaseModule", "ModuleCancelled", "ModuleContext", "ModuleError", "ModuleSummary"]

T = TypeVar("T")
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

    @abc.abstractmethod
    async def run(self, context: ModuleContext) -> ModuleSummary:
        """Analyse ``context.source`` and return a JSON-serialisable summary."""


@dataclass
class ModuleContext:
    job_id: str
    project_id: str
    source: Path
    module: str
    attempt: int
    options: Mapping[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("orchestrator.modules"))
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def check_cancelled(self) -> None:
        """Raise :class:`ModuleCancelled` if the module was cancelled (call it in loops)."""
        if self._cancelled.is_set():
            raise ModuleCancelled(self.module)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound ``fn(*args)`` in a worker thread (context fields go with it).

        If the module is cancelled meanwhile, the thread is asked to stop through
        :meth:`check_cancelled` and the await returns at once.
        """
        try:
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        except ModuleCancelled as exc:
            raise ModuleError(f"{self.module} was cancelled", module=self.module) from exc
