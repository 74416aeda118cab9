"""``CreateAnalysisJobUseCase``: validate, persist Pending, enqueue -> Queued."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
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
from orchestrator.domain.job import ModuleBudget
from orchestrator.domain.values import check_client_json, check_client_text, storable
from orchestrator.modules.budget import MAX_BUDGET_SECONDS
from orchestrator.modules.ignore import MAX_PATTERN_CHARS, MAX_PATTERNS, InvalidPattern, check_patterns
from orchestrator.modules.registry import MODULE_NAME_PATTERN, ModuleRegistry
from orchestrator.telemetry import JobTelemetry, parse_traceparent
from orchestrator.usecases.sources import SourcePolicy
from orchestrator.workflow import JobWorkflow
from otel import logs
from otel.instrument import instrument
from otel.vocabulary import OperationEvent, SpanName

__all__ = [
    "LIMITS",
    "CreateAnalysisJobUseCase",
    "CreateJobRequest",
    "JobOptionsInput",
    "ModuleBudgetInput",
    "ModuleList",
    "ModuleName",
    "ProjectId",
    "SourcePath",
    "StartOn",
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

ModuleName = Annotated[str, Field(min_length=1, max_length=64, pattern=MODULE_NAME_PATTERN)]


Seconds = Annotated[float, Field(gt=0, le=MAX_BUDGET_SECONDS, allow_inf_nan=False)]


class ModuleBudgetInput(BaseModel):
    """One module's timeout and expected runtime for this job, in seconds. Used as given
    (not scaled by the tree size); an absent one is the worker's, scaled."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: Seconds | None = None
    expected_s: Seconds | None = None


class JobOptionsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure_policy: FailurePolicy = FailurePolicy.COMPLETE_ALL
    concurrency: int | None = Field(default=None, ge=1, le=Limits.MAX_CONCURRENCY)
    module_options: dict[ModuleName, dict[str, Any]] = Field(default_factory=dict)
    module_budgets: dict[ModuleName, ModuleBudgetInput] = Field(
        default_factory=dict, description="Per-module timeout_s and expected_s for this job"
    )
    ignore: list[Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_PATTERNS,
        description="Extra gitignore-style patterns the walk leaves out (!pattern brings one back)",
    )
    default_ignores: bool = Field(
        default=True, description="Leave out VCS folders, virtualenvs, node_modules and build outputs"
    )
    gitignore: bool | None = Field(default=None, description="Honour .gitignore files (default: the worker's setting)")


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
    async def execute(
        self,
        request: CreateJobRequest | dict[str, Any],
        *,
        sources: SourcePolicy = _TRUSTED,
        start: StartOn | None = None,
    ) -> Job:
        """Validate ``request``, persist the job Pending, enqueue it. Returns it Queued.

        ``sources`` is the caller's trust: the CLI (the local user) is trusted with any
        path it can read; the HTTP API passes a policy confined to the source roots.
        With ``start``, the job is stored already claimed by that worker (Running,
        leased) in the same write, so no other worker can claim it first; the caller
        runs it (``orchestrator run``)."""
        if not isinstance(request, CreateJobRequest):
            _check_source_text(request.get("source"))
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
                OperationEvent.TRACEPARENT_IGNORED,
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
            if start is not None:
                return await self._workflow.create_started(
                    job, worker_id=start.worker_id, lease_seconds=start.lease_seconds
                )
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
        for name, given in request.options.module_options.items():
            _check_option_names(name, given, getattr(self._registry.get(name), "option_names", None))
        # What cannot be stored as given (NaN, NUL, lone surrogates, deep nesting) is
        # refused here, naming the field, before anything is written.
        check_client_text(request.project_id, "project_id")
        _check_source_text(request.source)
        check_client_json(request.options.module_options, "options.module_options")
        if len(json.dumps(request.options.module_options, default=str)) > Limits.MAX_OPTIONS_BYTES:
            raise InvalidRequest(
                f"options.module_options: larger than {Limits.MAX_OPTIONS_BYTES} bytes",
                field="options.module_options",
            )
        budgets = _module_budgets(request.options, names)
        try:
            ignore = tuple(check_patterns(request.options.ignore))
        except InvalidPattern as exc:
            raise InvalidRequest(f"options.ignore: {exc}", field="options.ignore") from None
        source = sources.check(request.source)
        options = JobOptions(
            failure_policy=request.options.failure_policy,
            concurrency=request.options.concurrency,
            module_options=request.options.module_options,
            module_budgets=budgets,
            ignore=ignore,
            default_ignores=request.options.default_ignores,
            gitignore=request.options.gitignore,
        )
        return tuple(names), options, source


def _check_source_text(source: object) -> None:
    """A path with bytes that are not UTF-8 (or a NUL) could not be stored as given, and a
    worker could not find its escaped form again."""
    if isinstance(source, str) and not storable(source):
        raise InvalidRequest(
            "source: the path is not valid UTF-8 (or holds a NUL); analyse a folder whose path is, or rename it",
            field="source",
        )


@dataclass(frozen=True, slots=True)
class StartOn:
    """Create the job already claimed by this worker (see ``execute``)."""

    worker_id: str
    lease_seconds: float


def _check_option_names(module: str, given: dict[str, Any], declared: frozenset[str] | None) -> None:
    """A module that declares the options it reads gets no others: a mistyped key
    would otherwise be ignored without a word."""
    unknown = sorted(set(given) - declared) if declared is not None else []
    if unknown:
        field = f"options.module_options.{module}"
        takes = f"it takes {', '.join(sorted(declared))}" if declared else "it takes no options"
        raise InvalidRequest(f"{field}: {module} has no option {', '.join(unknown)} ({takes})", field=field)


def _module_budgets(options: JobOptionsInput, names: list[str]) -> dict[str, ModuleBudget]:
    unknown = sorted(set(options.module_budgets) - set(names))
    if unknown:
        raise InvalidRequest(
            f"options.module_budgets: not among the job's modules: {', '.join(unknown)}",
            field="options.module_budgets",
        )
    budgets = {}
    for name, given in options.module_budgets.items():
        if given.timeout_s is not None and given.expected_s is not None and given.expected_s > given.timeout_s:
            field = f"options.module_budgets.{name}.expected_s"
            raise InvalidRequest(f"{field}: must not exceed timeout_s ({given.timeout_s:g})", field=field)
        budgets[name] = ModuleBudget(timeout_s=given.timeout_s, expected_s=given.expected_s)
    return budgets
