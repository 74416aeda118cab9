"""orchestrator: analysis jobs, observable end to end with OpenTelemetry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._exports import lazy_exports

if TYPE_CHECKING:
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

# The public names are imported on first use (PEP 562): importing a submodule, such as the
# domain from the telemetry vocabulary, must not drag in the whole package (and its cycles).
_HOME = {
    "AnalysisModule": "orchestrator.modules.base",
    "BaseModule": "orchestrator.modules.base",
    "ModuleContext": "orchestrator.modules.base",
    "ErrorCategory": "orchestrator.domain",
    "Job": "orchestrator.domain",
    "JobStatus": "orchestrator.domain",
    "ModuleError": "orchestrator.domain",
    "OrchestratorError": "orchestrator.domain",
    "Phase": "orchestrator.domain",
}


__getattr__ = lazy_exports(__name__, _HOME, globals())


#: The one place the version is written: pyproject.toml reads it statically (setuptools'
#: dynamic version), and ``orchestrator --version``, ``/healthz`` and the telemetry
#: resource's ``service.version`` import it. Keep it a plain string literal.
__version__ = "0.1.0"
