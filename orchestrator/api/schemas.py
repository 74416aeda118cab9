"""Request and response models of the HTTP API (they are its OpenAPI document)."""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain import Job, LifecycleEntry
from orchestrator.serialization import entry_json, job_json
from orchestrator.usecases.create import JobOptionsInput, ModuleList, ProjectId, SourcePath
from orchestrator.webhooks.models import (
    SUBSCRIBABLE_EVENTS,
    Attempt,
    Delivery,
    Subscription,
    display_url,
    url_fingerprint,
)

__all__ = [
    "AttemptOut",
    "DeliveryOut",
    "ErrorBody",
    "EventOut",
    "HealthOut",
    "JobCreate",
    "JobOut",
    "JobPage",
    "ModuleResultOut",
    "WebhookCreate",
    "WebhookOut",
]

EventName = Literal[
    "job.lifecycle.enqueue",
    "job.lifecycle.start",
    "job.lifecycle.complete",
    "job.lifecycle.fail",
    "job.lifecycle.cancel",
    "job.lifecycle.recover",
]
_ALL_EVENTS: list[EventName] = list(typing.get_args(EventName))
assert set(_ALL_EVENTS) == set(SUBSCRIBABLE_EVENTS)  # the Literal mirrors the vocabulary


class JobCreate(BaseModel):
    """A job to create. The caller's ``traceparent`` header is linked from the job's trace."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    project_id: ProjectId
    source: SourcePath
    modules: ModuleList = None
    options: JobOptionsInput = Field(default_factory=JobOptionsInput)


class ModuleResultOut(BaseModel):
    module: str
    version: str
    outcome: Literal["ok", "error", "timeout", "panic", "cancelled"]
    started_ns: int
    duration_ms: float
    expected_ms: float
    timeout_ms: float
    attempt: int
    overran: bool
    summary: dict[str, Any]
    error: str | None
    error_type: str | None


class JobOut(BaseModel):
    id: str
    project_id: str
    source: str
    modules: list[str]
    options: dict[str, Any]
    status: Literal["pending", "queued", "running", "completed", "failed", "cancelled"]
    attempt: int
    reason: str | None
    error_category: str | None
    error_phase: str | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    trace_id: str = Field(description="The job's trace id: open it in your tracing backend")
    root_span_id: str
    sampled: bool
    cancel_requested: str | None = Field(description="Why a cancellation of this running job was asked")
    cancel_requested_by: str | None
    cancel_requested_at: str | None
    damaged: str | None = Field(
        default=None, description="Set when stored fields could not be read back: which (the rest is as stored)"
    )
    results: list[ModuleResultOut]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls.model_validate(job_json(job))


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class EventOut(BaseModel):
    seq: int
    event: str = Field(description="The lifecycle event: a transition, or job.lifecycle.cancel_requested")
    status_from: str | None
    status_to: str
    reason: str
    at: str
    duration_ms: float = Field(description="Time spent in status_from")
    attempt: int
    worker_id: str | None

    @classmethod
    def of(cls, entry: LifecycleEntry) -> EventOut:
        return cls.model_validate(entry_json(entry))


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    project_id: ProjectId
    url: str = Field(min_length=8, max_length=2048, description="http(s) URL the events are POSTed to")
    secret: str = Field(
        min_length=16, max_length=256, description="Signing secret (HMAC-SHA256); never returned or logged"
    )
    events: list[EventName] = Field(
        default_factory=lambda: list(_ALL_EVENTS), min_length=1, max_length=len(SUBSCRIBABLE_EVENTS)
    )


class WebhookOut(BaseModel):
    id: str
    project_id: str
    url: str = Field(
        description="scheme://host[:port] and /… when the URL has a path or query: never the full URL, "
        "which may hold a secret"
    )
    url_sha256: str = Field(description="The first 16 hex digits of the SHA-256 of the full URL")
    events: list[str]
    created_ns: int

    @classmethod
    def of(cls, s: Subscription) -> WebhookOut:
        return cls(
            id=s.id,
            project_id=s.project_id,
            url=display_url(s.url),
            url_sha256=url_fingerprint(s.url),
            events=list(s.events),
            created_ns=s.created_ns,
        )


class AttemptOut(BaseModel):
    attempt: int
    at_ns: int
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(
            attempt=a.attempt,
            at_ns=a.at_ns,
            duration_ms=a.duration_ms,
            outcome=a.outcome,
            status_code=a.status_code,
            error=a.error,
        )


class DeliveryOut(BaseModel):
    seq: int = Field(description="Outbox order; pass a page's first as `before` for the page before it")
    id: str
    subscription_id: str
    job_id: str
    event: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_ns: int
    finished_ns: int | None
    trace_id: str
    payload: dict[str, Any]
    history: list[AttemptOut]

    @classmethod
    def of(cls, d: Delivery, attempts: list[Attempt]) -> DeliveryOut:
        return cls(
            seq=d.seq,
            id=d.id,
            subscription_id=d.subscription_id,
            job_id=d.job_id,
            event=d.event,
            status=d.status,  # type: ignore[arg-type]
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_ns=d.created_ns,
            finished_ns=d.finished_ns,
            trace_id=d.trace_id,
            payload=dict(d.payload),
            history=[AttemptOut.of(a) for a in attempts],
        )
