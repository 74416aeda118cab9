"""Analysis modules: the interface, the registry and the built-in modules."""

from __future__ import annotations

from orchestrator.modules.base import AnalysisModule, BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.registry import ENTRY_POINT_GROUP, ModuleRegistry

__all__ = ["ENTRY_POINT_GROUP", "AnalysisModule", "BaseModule", "ModuleContext", "ModuleRegistry", "ModuleSummary"]
