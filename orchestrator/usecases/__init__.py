"""Use cases: the application's entry points, wired by :mod:`orchestrator.bootstrap`."""

from __future__ import annotations

from orchestrator.usecases.create import CreateAnalysisJobUseCase, CreateJobRequest
from orchestrator.usecases.execute import CancelKind, ExecuteAnalysisJobUseCase, JobControl

__all__ = ["CancelKind", "CreateAnalysisJobUseCase", "CreateJobRequest", "ExecuteAnalysisJobUseCase", "JobControl"]
