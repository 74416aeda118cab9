"""Analysis modules: the interface, the registry, the shared file index and the built-ins."""

from __future__ import annotations

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
