"""The module registry: built-in modules plus third-party ones from entry points."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Final

from orchestrator.domain import UnknownModule
from orchestrator.modules.base import AnalysisModule
from orchestrator.modules.budget import MAX_BUDGET_SECONDS
from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["ENTRY_POINT_GROUP", "MODULE_NAME_PATTERN", "ModuleRegistry"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "orchestrator.modules"
#: A module's name, as a module declares it and a job names it.
MODULE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class ModuleRegistry:
    def __init__(self, modules: Iterable[AnalysisModule] = ()) -> None:
        self._modules: dict[str, AnalysisModule] = {}
        for module in modules:
            self.register(module)

    @classmethod
    def default(cls, *, entry_points: bool = True) -> ModuleRegistry:
        """The built-in modules, plus those registered under ``orchestrator.modules``."""
        from orchestrator.modules.builtin import BUILTIN_MODULES

        registry = cls(module() for module in BUILTIN_MODULES)
        if entry_points:
            registry.load_entry_points()
        return registry

    def register(self, module: AnalysisModule) -> None:
        problems = _check(module)
        if problems:
            raise TypeError(f"{module!r} is not an analysis module: {'; '.join(problems)}")
        if module.name in self._modules:
            raise ValueError(f"a module named {module.name!r} is already registered")
        self._modules[module.name] = module

    def load_entry_points(self) -> None:
        """Load third-party modules; a broken one is logged and skipped, never fatal."""
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = entry.load()
                module = loaded() if isinstance(loaded, type) else loaded
                self.register(module)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                logs.event(
                    log,
                    logging.ERROR,
                    OperationEvent.ERROR,
                    f"cannot load module entry point {entry.name!r} ({entry.value}): {exc}",
                    operation="modules.load",
                    module=entry.name,
                    exc_info=exc,
                )

    def get(self, name: str) -> AnalysisModule:
        try:
            return self._modules[name]
        except KeyError:
            known = ", ".join(sorted(self._modules))
            raise UnknownModule(f"unknown module {name!r} (known: {known})", field="modules", module=name) from None

    def names(self) -> list[str]:
        return sorted(self._modules)

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[AnalysisModule]:
        return iter(sorted(self._modules.values(), key=lambda m: m.name))

    def __len__(self) -> int:
        return len(self._modules)


def _check(module: object) -> list[str]:
    problems = []
    name = getattr(module, "name", None)
    if not isinstance(name, str) or not re.fullmatch(MODULE_NAME_PATTERN, name):
        # What a job can name: a name only some callers can spell is of no use.
        problems.append("name must be 1-64 ASCII letters, digits, - and _, starting with a letter or digit")
    for attr in ("expected_runtime", "timeout"):
        value = getattr(module, attr, None)
        # NaN passed "<= 0" and was stored in every result, where it broke reading them back.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{attr} must be a number of seconds")
        elif not (math.isfinite(value) and 0 < value <= MAX_BUDGET_SECONDS):
            # Past it, a value in milliseconds could overflow to infinity when stored.
            problems.append(f"{attr} must be above 0 and at most {MAX_BUDGET_SECONDS:g} seconds, not {value!r}")
    if not callable(getattr(module, "run", None)):
        problems.append("run(context) is missing")
    return problems
