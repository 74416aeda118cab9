"""Budgets that fit the project: each module's timeout and expected runtime for one job.

Where the numbers come from, the first that says something winning, per number:

1. the job's ``options.module_budgets[module]`` (``timeout_s``, ``expected_s``): this
   project's own numbers, used as given;
2. the settings ``ORCHESTRATOR_MODULE_TIMEOUTS`` / ``ORCHESTRATOR_MODULE_EXPECTED``
   (``module=seconds,...``; ``*`` for every module);
3. the module's declared ``timeout`` / ``expected_runtime``.

Numbers from 2 and 3 describe a *reference-size* project, so they are scaled by the
size of the tree being analysed (its index, after ignores)::

    scale = max(1, files / ORCHESTRATOR_BUDGET_REFERENCE_FILES,
                   bytes / ORCHESTRATOR_BUDGET_REFERENCE_BYTES)

A project up to the reference size gets the declared numbers; one ten times larger (in
files or in bytes, whichever is larger) gets ten times the time. A reference of 0 turns
that dimension off. While the walk runs, a module's deadline follows the files found so
far (every half second: the timeout they already earn, a lower bound of the final one);
when the index is known, it moves to the scaled timeout. The expected runtime is scaled
once the index is known.

Modules that scan file contents share one pass over the files and finish with it, so a
module that shared the pass is expected to take as long as the slowest-expected module
it shared it with (``secrets`` beside ``python_syntax`` is expected to take as long as
``python_syntax``): "overran" keeps meaning slower than expected for this job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio

__all__ = [
    "ALL_MODULES",
    "MAX_BUDGET_SECONDS",
    "Budget",
    "BudgetPolicy",
    "JobBudget",
    "JobBudgets",
    "parse_module_seconds",
]

#: The key that sets a number for every module in the settings' ``module=seconds`` lists.
ALL_MODULES: Final = "*"
#: A week: longer is a typo, not a budget.
MAX_BUDGET_SECONDS: Final = 7 * 24 * 3600.0
_MODULE_KEY: Final = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")


class JobBudget(Protocol):
    """A job's own numbers for one module (``JobOptions.module_budgets[module]``)."""

    @property
    def timeout_s(self) -> float | None: ...

    @property
    def expected_s(self) -> float | None: ...


class _Declared(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def expected_runtime(self) -> float: ...

    @property
    def timeout(self) -> float: ...


def parse_module_seconds(text: str) -> dict[str, float]:
    """``"secrets=120, inventory=300, *=600"`` as a mapping; ValueError names the bad part."""
    parsed: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not _MODULE_KEY.match(name):
            raise ValueError(f"{part!r} is not module=seconds")
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value.strip()!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_BUDGET_SECONDS:
            raise ValueError(f"{part!r}: seconds must be above 0 and at most {MAX_BUDGET_SECONDS:g}")
        parsed[name] = seconds
    return parsed


@dataclass(frozen=True, slots=True)
class Budget:
    """One module's numbers for one job (scaled or not, see the module docstring)."""

    timeout_s: float
    expected_s: float
    #: Whether each number is a reference-size number that the tree size scales.
    timeout_scales: bool = True
    expected_scales: bool = True

    def scaled(self, scale: float) -> Budget:
        return Budget(
            self.timeout_s * scale if self.timeout_scales else self.timeout_s,
            self.expected_s * scale if self.expected_scales else self.expected_s,
            timeout_scales=False,
            expected_scales=False,
        )


@dataclass(frozen=True)
class BudgetPolicy:
    """The settings' part: overrides per module and the reference size."""

    timeouts: Mapping[str, float] = field(default_factory=dict)
    expected: Mapping[str, float] = field(default_factory=dict)
    reference_files: int = 1_000
    reference_bytes: int = 25_000_000

    def base(self, module: _Declared, job: JobBudget | None = None) -> Budget:
        """The module's numbers before the tree size is known."""
        timeout = self.timeouts.get(module.name, self.timeouts.get(ALL_MODULES, module.timeout))
        expected = self.expected.get(module.name, self.expected.get(ALL_MODULES, module.expected_runtime))
        job_timeout = job.timeout_s if job is not None else None
        job_expected = job.expected_s if job is not None else None
        return Budget(
            job_timeout if job_timeout is not None else timeout,
            job_expected if job_expected is not None else expected,
            timeout_scales=job_timeout is None,
            expected_scales=job_expected is None,
        )

    def scale(self, files: int, total_bytes: int) -> float:
        """How many reference-size projects the tree is worth (at least 1)."""
        by_files = files / self.reference_files if self.reference_files > 0 else 0.0
        by_bytes = total_bytes / self.reference_bytes if self.reference_bytes > 0 else 0.0
        return max(1.0, by_files, by_bytes)


class JobBudgets:
    """One job's budgets: each module's numbers when it starts, and its deadline moved
    to the scaled timeout once the tree has been walked (see the module docstring)."""

    def __init__(self, policy: BudgetPolicy, job: Mapping[str, JobBudget] | None = None) -> None:
        self._policy = policy
        self._job: Mapping[str, JobBudget] = job or {}
        self._scale: float | None = None
        self._running: dict[str, tuple[Budget, anyio.CancelScope, float]] = {}
        self._bases: dict[str, Budget] = {}
        #: The scale the files found so far earn, while the walk runs.
        self._partial = 1.0

    @property
    def scale(self) -> float | None:
        """The tree's scale once it is known."""
        return self._scale

    def start(self, module: _Declared, scope: anyio.CancelScope) -> Budget:
        """``module`` starts now under ``scope``: its budget, and the scope's deadline set."""
        base = self._policy.base(module, self._job.get(module.name))
        budget = base.scaled(self._scale) if self._scale is not None else base
        started = anyio.current_time()
        # Before the tree is sized: the timeout the files found so far already earn.
        earned = budget if self._scale is not None else base.scaled(self._partial)
        scope.deadline = started + earned.timeout_s
        self._running[module.name] = (base, scope, started)
        self._bases[module.name] = base
        return budget

    def growing(self, files: int, total_bytes: int) -> None:
        """The walk, still running, has found this much: running modules' deadlines move
        to the timeout that size already earns (never earlier: the final size only adds)."""
        if self._scale is not None:
            return
        partial = self._policy.scale(files, total_bytes)
        if partial <= self._partial:
            return
        self._partial = partial
        for base, scope, started in self._running.values():
            scope.deadline = max(scope.deadline, started + base.scaled(partial).timeout_s)

    def sized(self, files: int, total_bytes: int) -> None:
        """The tree is known: move the running modules' deadlines to their scaled timeouts."""
        self._scale = self._policy.scale(files, total_bytes)
        for base, scope, started in self._running.values():
            scope.deadline = started + base.scaled(self._scale).timeout_s

    def current(self, module: _Declared) -> Budget:
        """``module``'s budget as it stands now."""
        entry = self._running.get(module.name)
        base = entry[0] if entry is not None else self._policy.base(module, self._job.get(module.name))
        return base.scaled(self._scale) if self._scale is not None else base

    def finish(self, module: _Declared, *, shared_with: Iterable[str] = ()) -> Budget:
        """The budget ``module`` ran under, as it stands at its end.

        A module that shared the job's file pass with others cannot finish before that
        pass does: its expected runtime is the largest of theirs (its timeout stays its own).
        """
        budget = self.current(module)
        self._running.pop(module.name, None)
        others = [self._bases[name] for name in shared_with if name in self._bases and name != module.name]
        if not others:
            return budget
        scale = self._scale if self._scale is not None else 1.0
        expected = max([budget.expected_s, *(base.scaled(scale).expected_s for base in others)])
        return Budget(budget.timeout_s, expected, timeout_scales=False, expected_scales=False)
