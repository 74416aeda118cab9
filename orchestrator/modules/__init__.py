"""Analysis modules: the interface, the registry, the shared file index and the built-ins.

The names below are imported when first used: a pool worker process unpickling an
analyzer imports its module (and ``orchestrator.modules`` with it) without the
registry and its logging and OpenTelemetry imports, which it never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._exports import lazy_exports

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

__getattr__ = lazy_exports(
    __name__,
    {
        "ENTRY_POINT_GROUP": "orchestrator.modules.registry",
        "AnalysisModule": "orchestrator.modules.base",
        "BaseModule": "orchestrator.modules.base",
        "FileAnalyzer": "orchestrator.modules.base",
        "FileContent": "orchestrator.modules.scan",
        "FileEntry": "orchestrator.modules.index",
        "FileIndex": "orchestrator.modules.index",
        "ModuleContext": "orchestrator.modules.base",
        "ModuleProgress": "orchestrator.modules.progress",
        "ModuleRegistry": "orchestrator.modules.registry",
        "ModuleSummary": "orchestrator.modules.base",
        "ScanResult": "orchestrator.modules.job_files",
    },
    globals(),
)
