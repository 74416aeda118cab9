"""``CreateAnalysisJobUseCase``: validate, persist Pending, enqueue -> Queued."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain import (
    FailurePolicy,
    InvalidRequest,
    Job,
    JobOptions,
    Phase,
)
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.telemetry import JobTelemetry, parse_traceparent
from orchestrator.usecases.sources import SourcePolicy
from orchestrator.workflow import JobWorkflow
from otel import logs
from otel.instrument import instrument
from otel.vocabulary import SpanName

__all__ = [
    "LIMITS",
    "CreateAnalysisJobUseCase",
    "CreateJobRequest",
    "JobOptionsInput",
    "ModuleList",
    "ModuleName",
    "ProjectId",
    "SourcePath",
    "validate_project_id",
    "validation_error",
]

log = logging.getLogger(__name__)


class Limits:
    MAX_MODULES = 64
    MAX_OPTIONS_BYTES = 64 * 1024
    MAX_SOURCE_CHARS = 4096
    MAX_CONCURRENCY = 64


LIMITS = Limits()

ModuleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]


class JobOptionsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure_policy: FailurePolicy = FailurePolicy.COMPLETE_ALL
    concurrency: int | None = Field(default=None, ge=1, le=Limits.MAX_CONCURRENCY)
    module_options: dict[ModuleName, dict[str, Any]] = Field(default_factory=dict)


ProjectId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Project identifier: letters, digits and . _ : / -",
    ),
]
SourcePath = Annotated[
    str, Field(min_length=1, max_length=Limits.MAX_SOURCE_CHARS, description="Local path to analyse")
]
ModuleList = Annotated[
    list[ModuleName] | None,
    Field(max_length=Limits.MAX_MODULES, description="Modules to run (default: all registered)"),
]


class CreateJobRequest(BaseModel):
    """What a caller asks for. Validated at the edge (CLI, API) by pydantic."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    project_id: ProjectId
    source: SourcePath
    modules: ModuleList = None
    options: JobOptionsInput = Field(default_factory=JobOptionsInput)
    # Not length-limited here: a malformed caller context (an over-long one too) is
    # ignored with a warning, it never fails the request (see execute).
    traceparent: str | None = Field(default=None, description="Caller's W3C traceparent (ignored when malformed)")


_PROJECT_ID = pydantic.TypeAdapter(ProjectId)
#: Longer traceparent values are malformed (W3C's is 55 characters; later versions may add fields).
_MAX_TRACEPARENT_CHARS = 128
_TRUSTED = SourcePolicy.trusted()


def validate_project_id(value: str) -> str:
    try:
        return _PROJECT_ID.validate_python(value)
    except pydantic.ValidationError as exc:
        raise InvalidRequest(f"project_id: {exc.errors()[0]['msg']}", field="project_id") from None


def validation_error(exc: pydantic.ValidationError) -> InvalidRequest:
    """The first problem of a pydantic error as one readable, typed error."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    return InvalidRequest(f"{field}: {first['msg']}", field=field, phase=Phase.CREATE)


class CreateAnalysisJobUseCase:
    def __init__(self, workflow: JobWorkflow, registry: ModuleRegistry, telemetry: JobTelemetry) -> None:
        self._workflow = workflow
        self._registry = registry
        self._telemetry = telemetry

    @instrument(
        "usecase.create_job",
        fields=lambda self, request, **_: {"project_id": getattr(request, "project_id", None)},
        level=logging.DEBUG,
    )
    async def execute(self, request: CreateJobRequest | dict[str, Any], *, sources: SourcePolicy = _TRUSTED) -> Job:
        """Validate ``request``, persist the job Pending, enqueue it. Returns it Queued.

        ``sources`` is the caller's trust: the CLI (the local user) is trusted with any
        path it can read; the HTTP API passes a policy confined to the source roots."""
        if not isinstance(request, CreateJobRequest):
            try:
                request = CreateJobRequest.model_validate(request)
            except pydantic.ValidationError as exc:
                raise validation_error(exc) from None
        modules, options, source = self._validate(request, sources)
        raw = request.traceparent
        link = raw if raw and len(raw) <= _MAX_TRACEPARENT_CHARS and parse_traceparent(raw) else None
        if request.traceparent and link is None:
            logs.event(
                log,
                logging.WARNING,
                "job.traceparent.ignored",
                "malformed traceparent ignored",
                project_id=request.project_id,
            )
        trace_context = self._telemetry.new_trace(link=link)
        job = Job.new(
            project_id=request.project_id,
            source=str(source),
            modules=modules,
            options=options,
            trace=trace_context,
        )
        with self._telemetry.phase(job, SpanName.CREATE, start_ns=job.created_ns):
            # Persisted and enqueued in one write: a job is never left Pending because
            # its enqueue failed after its insert succeeded.
            return await self._workflow.create(job, enqueue=True)

    def _validate(self, request: CreateJobRequest, sources: SourcePolicy) -> tuple[tuple[str, ...], JobOptions, Path]:
        names = request.modules if request.modules else self._registry.names()
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise InvalidRequest(f"modules: listed more than once: {', '.join(duplicates)}", field="modules")
        for name in names:
            self._registry.get(name)  # raises UnknownModule
        unknown_options = sorted(set(request.options.module_options) - set(names))
        if unknown_options:
            raise InvalidRequest(
                f"options.module_options: not among the job's modules: {', '.join(unknown_options)}",
                field="options.module_options",
            )
        if len(json.dumps(request.options.module_options, default=str)) > Limits.MAX_OPTIONS_BYTES:
            raise InvalidRequest(
                f"options.module_options: larger than {Limits.MAX_OPTIONS_BYTES} bytes",
                field="options.module_options",
            )
        source = sources.check(request.source)
        options = JobOptions(
            failure_policy=request.options.failure_policy,
            concurrency=request.options.concurrency,
            module_options=request.options.module_options,
        )
        return tuple(names), options, source
