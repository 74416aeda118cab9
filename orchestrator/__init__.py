"""orchestrator: analysis jobs, observable end to end with OpenTelemetry."""

from __future__ import annotations

from orchestrator.domain import ErrorCategory, Job, JobStatus, ModuleError, OrchestratorError, Phase
from orchestrator.modules.base import AnalysisModule, BaseModule, ModuleContext

__all__ = [
    "AnalysisModule",
    "BaseModule",
    "ErrorCategory",
    "Job",
    "JobStatus",
    "ModuleContext",
    "ModuleError",
    "OrchestratorError",
    "Phase",
]
__version__ = "0.1.0"
