"""Analysis modules: the interface, the registry, the shared file index and the built-ins.

The names below are imported when first used: a pool worker process unpickling an
analyzer imports its module (and ``orchestrator.modules`` with it) without the
registry and its logging and OpenTelemetry imports, which it never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from orchestrator.modules.base import AnalysisModule, BaseModule, FileAnalyzer, ModuleContext, ModuleSummary
    from orchestrator.modules.index import FileEntry, FileIndex
    from orchestrator.modules.job_files import ScanResult
    from orchestrator.modules.progress import ModuleProgress
    from orchestrator.modules.registry import ENTRY_POINT_GROUP, ModuleRegistry
    from orchestrator.modules.scan import FileContent

__all__ = [
    "ENTRY_POINT_GROUP",
    "AnalysisModule",
    "BaseModule",
    "FileAnalyzer",
    "FileContent",
    "FileEntry",
    "FileIndex",
    "ModuleContext",
    "ModuleProgress",
    "ModuleRegistry",
    "ModuleSummary",
    "ScanResult",
]

_WHERE: Final = {
    "ENTRY_POINT_GROUP": "registry",
    "AnalysisModule": "base",
    "BaseModule": "base",
    "FileAnalyzer": "base",
    "FileContent": "scan",
    "FileEntry": "index",
    "FileIndex": "index",
    "ModuleContext": "base",
    "ModuleProgress": "progress",
    "ModuleRegistry": "registry",
    "ModuleSummary": "base",
    "ScanResult": "job_files",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # once: later uses are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
