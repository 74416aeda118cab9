"""The HTTP API: create, inspect and cancel jobs; manage webhook subscriptions.

Errors share one JSON body, ``{"error": {"status", "code", "message", "field"}}``:
400 a Host header the server does not answer to, 401 a missing or wrong bearer token,
403 a state-changing request a browser sent on behalf of another site, 404 an unknown
job or subscription, 408 a request body not received in time, 409 an illegal
transition, 413 a body over the limit, 422 an invalid field (named), 429 a client over
its creation rate, 503 a full queue or a store that cannot be reached (429 and 503 with
``Retry-After``). A client error is never a 500.

What a client may reach is decided here (see README: Security): sources only inside
the configured roots, webhook targets only public addresses, subscription URLs never
shown in full.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.security import HTTPBearer
from opentelemetry import trace

from orchestrator import __version__
from orchestrator.api.docs import install_docs
from orchestrator.api.errors import ApiRefusal, install_error_handlers
from orchestrator.api.limits import QUEUE_FULL_RETRY_AFTER, BodyLimit, CreateRateLimiter
from orchestrator.api.schemas import (
    DeliveryOut,
    ErrorBody,
    EventOut,
    HealthOut,
    JobCreate,
    JobOut,
    JobPage,
    WebhookCreate,
    WebhookOut,
)
from orchestrator.api.security import AccessPolicy, BearerAuth, CrossSiteCheck, HostCheck, default_allowed_hosts
from orchestrator.bootstrap import App
from orchestrator.domain import ErrorCategory, JobStatus, now_ns
from orchestrator.domain.values import MAX_STORED_INT, check_client_text
from orchestrator.serialization import nanoseconds
from orchestrator.settings import Settings
from orchestrator.telemetry import parse_traceparent
from orchestrator.usecases.sources import SourcePolicy
from orchestrator.webhooks.models import Subscription
from orchestrator.webhooks.store import WebhookStore, webhook_store
from orchestrator.webhooks.targets import check_subscription_url
from otel import logs
from otel.vocabulary import Attr, LinkKind, OperationEvent

__all__ = ["TRACE_HEADER", "ApiConfig", "create_api"]

log = logging.getLogger(__name__)

TRACE_HEADER = "X-Trace-Id"
#: Job ids (uuid7, or a unique prefix of one) and project ids, as query parameters.
_ID_PATTERN = r"^[0-9a-f-]{1,64}$"
_PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 408, 409, 413, 422, 503)
}


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the API enforces, from :class:`Settings` (see :meth:`from_settings`)."""

    token: str | None = None
    allowed_hosts: tuple[str, ...] = default_allowed_hosts("127.0.0.1")
    protect_docs: bool = False
    source_roots: tuple[Path, ...] = ()
    max_body_bytes: int = 1024 * 1024
    body_timeout_seconds: float = 30.0
    max_queued_jobs: int = 10_000
    create_rate_per_minute: int = 0
    webhook_allow_private: bool = False
    webhook_private_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, *, bind_host: str = "127.0.0.1") -> ApiConfig:
        return cls(
            token=settings.api_token.get_secret_value() if settings.api_token else None,
            allowed_hosts=settings.api_allowed_hosts or default_allowed_hosts(bind_host),
            protect_docs=settings.api_protect_docs,
            source_roots=settings.source_roots,
            max_body_bytes=settings.api_max_body_bytes,
            body_timeout_seconds=settings.api_body_timeout_seconds,
            max_queued_jobs=settings.max_queued_jobs,
            create_rate_per_minute=settings.api_create_rate_per_minute,
            webhook_allow_private=settings.webhook_allow_private,
            webhook_private_hosts=settings.webhook_private_hosts,
        )

    @property
    def access(self) -> AccessPolicy:
        return AccessPolicy(token=self.token, allowed_hosts=self.allowed_hosts, protect_docs=self.protect_docs)


def create_api(app: App, config: ApiConfig | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI application around an opened :class:`App`. ``config`` defaults to the
    app's settings; keyword ``overrides`` replace single fields of it (tests)."""
    config = dataclasses.replace(config or ApiConfig.from_settings(app.settings), **overrides)
    hooks: WebhookStore = webhook_store(app.store)
    sources = SourcePolicy.confined(config.source_roots)
    limiter = CreateRateLimiter(config.create_rate_per_minute) if config.create_rate_per_minute else None
    limited_log = logs.RateLimitedLog(10.0)
    api = FastAPI(
        title="orchestrator",
        version=__version__,
        description="Analysis jobs, observable end to end with OpenTelemetry.",
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
    )
    # Outermost last: Host check, then the token, then the body limits, then the routes.
    api.add_middleware(BodyLimit, limit=config.max_body_bytes, timeout=config.body_timeout_seconds)
    api.add_middleware(BearerAuth, policy=config.access)
    api.add_middleware(CrossSiteCheck, allowed=config.allowed_hosts)
    api.add_middleware(HostCheck, allowed=config.allowed_hosts)
    install_error_handlers(api)
    install_docs(api)
    # The bearer scheme in the OpenAPI document (Swagger's "Authorize"); BearerAuth enforces it.
    v1: list[Any] = [Depends(HTTPBearer(auto_error=False))] if config.token is not None else []

    def refuse_if_limited(request: Request) -> None:
        if limiter is None:
            return
        try:
            limiter.take(request.client.host if request.client else "unknown")
        except ApiRefusal:
            if limited_log.ready():
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.API_LIMITED,
                    "job creation refused: a client is over its rate limit",
                    limit="rate",
                    suppressed=limited_log.take_suppressed(),
                )
            raise

    async def refuse_if_queue_full() -> None:
        depth = await app.store.queue_depth()
        if depth < config.max_queued_jobs:
            return
        if limited_log.ready():
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.API_LIMITED,
                f"job creation refused: {depth} jobs queued (ORCHESTRATOR_MAX_QUEUED_JOBS={config.max_queued_jobs})",
                limit="queue",
                suppressed=limited_log.take_suppressed(),
            )
        raise ApiRefusal(
            503,
            "queue_full",
            f"the job queue is full ({config.max_queued_jobs} jobs waiting); retry later",
            retry_after=QUEUE_FULL_RETRY_AFTER,
        )

    @api.get("/healthz", tags=["health"])
    async def healthz() -> HealthOut:
        """The process is up, and its version."""
        return HealthOut(status="ok", version=__version__)

    @api.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, str]:
        """The store is reachable."""
        await app.store.ping()
        return {"status": "ready", "store": app.store.backend}

    @api.post(
        "/v1/jobs",
        status_code=201,
        tags=["jobs"],
        dependencies=v1,
        responses={429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def create_job(body: JobCreate, request: Request, response: Response) -> JobOut:
        """Create a job and queue it. The response carries its trace id (also in ``X-Trace-Id``).
        ``source`` must lie inside the server's source roots (``ORCHESTRATOR_SOURCE_ROOTS``)."""
        refuse_if_limited(request)
        await refuse_if_queue_full()
        request_span = trace.get_current_span()
        caller = _traceparent_of(request_span)
        job = await app.create.execute({**body.model_dump(), "traceparent": caller}, sources=sources)
        root = parse_traceparent(job.trace.traceparent)
        if root is not None and request_span.is_recording():
            request_span.add_link(root, {Attr.LINK_KIND: LinkKind.JOB})
            request_span.set_attribute(Attr.JOB_ID, job.id)
        response.headers[TRACE_HEADER] = job.trace.trace_id
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobOut.of(job)

    @api.get("/v1/jobs", tags=["jobs"], dependencies=v1)
    async def list_jobs(
        project_id: Annotated[str | None, Query(max_length=128, pattern=_PROJECT_PATTERN)] = None,
        status_: Annotated[JobStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=64, pattern=_ID_PATTERN, description="next_cursor of the previous page")
        ] = None,
        error_category: Annotated[ErrorCategory | None, Query()] = None,
        since: Annotated[
            dt.datetime | None,
            Query(description="only jobs created at or after this time (RFC 3339; UTC when it has no zone)"),
        ] = None,
    ) -> JobPage:
        """Jobs newest first, filtered by project, status, error category and creation
        time, one page at a time."""
        found = await app.store.list_jobs(
            status=status_,
            project_id=project_id,
            error_category=error_category,
            since_ns=None if since is None else nanoseconds(since),
            limit=limit + 1,
            after=cursor,
        )
        page = found[:limit]
        next_cursor = page[-1].id if len(found) > limit else None
        return JobPage(items=[JobOut.of(j) for j in page], next_cursor=next_cursor)

    @api.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=v1)
    async def get_job(job_id: str, response: Response) -> JobOut:
        job = await app.store.get(job_id)
        response.headers[TRACE_HEADER] = job.trace.trace_id
        return JobOut.of(job)

    @api.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], dependencies=v1, responses={202: {"model": JobOut}})
    async def cancel_job(
        job_id: str,
        request: Request,
        response: Response,
        reason: Annotated[str, Query(max_length=500)] = "cancelled via API",
    ) -> JobOut:
        """Cancel a job: at once when pending or queued (200), or ask its worker to stop it
        (202: it ends Cancelled within a bounded time). 409 when it already finished."""
        check_client_text(reason, "reason")
        job = await app.workflow.cancel(job_id, reason=reason, requested_by=_requester(request))
        response.status_code = 202 if job.status is JobStatus.RUNNING else 200
        response.headers[TRACE_HEADER] = job.trace.trace_id
        return JobOut.of(job)

    @api.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"], dependencies=v1)
    async def delete_job(job_id: str) -> Response:
        """Delete a finished job with its history and webhook deliveries (retention, or a
        damaged job). 409 while it is not finished: cancel it first."""
        job = await app.store.get(job_id)
        if not job.status.terminal or not await app.store.delete_jobs([job.id]):
            message = f"job {job.id} is {job.status}: only a finished job can be deleted (cancel it first)"
            raise ApiRefusal(409, "not_finished", message)
        return Response(status_code=204)

    @api.get("/v1/jobs/{job_id}/events", tags=["jobs"], dependencies=v1)
    async def job_events(job_id: str, response: Response) -> list[EventOut]:
        """The job's persisted lifecycle history, oldest first."""
        job = await app.store.get(job_id)
        response.headers[TRACE_HEADER] = job.trace.trace_id
        return [EventOut.of(e) for e in await app.store.history(job_id)]

    @api.get("/v1/jobs/{job_id}/deliveries", tags=["webhooks"], dependencies=v1)
    async def job_deliveries(job_id: str) -> list[DeliveryOut]:
        await app.store.get(job_id)
        return [DeliveryOut.of(d, await hooks.attempts(d.id)) for d in await hooks.list_deliveries(job_id=job_id)]

    @api.post("/v1/webhooks", status_code=201, tags=["webhooks"], dependencies=v1)
    async def create_webhook(body: WebhookCreate) -> WebhookOut:
        """Subscribe a URL to a project's lifecycle events. The URL must lead to a public
        address. The secret is never returned, the URL only as ``scheme://host/…`` with a
        fingerprint (``url_sha256``: the first 16 hex digits of its SHA-256)."""
        url = await check_subscription_url(
            body.url, allow_private=config.webhook_allow_private, private_hosts=config.webhook_private_hosts
        )
        subscription = Subscription(
            id=secrets.token_hex(8),
            project_id=body.project_id,
            url=url,
            secret=body.secret,
            events=tuple(dict.fromkeys(body.events)),
            created_ns=now_ns(),
        )
        await hooks.add_subscription(subscription)
        logs.event(
            log,
            logging.INFO,
            OperationEvent.WEBHOOK_SUBSCRIBED,
            "webhook subscription created",
            project_id=subscription.project_id,
            subscription_id=subscription.id,
            events=",".join(subscription.events),
        )
        return WebhookOut.of(subscription)

    @api.get("/v1/webhooks", tags=["webhooks"], dependencies=v1)
    async def list_webhooks(project_id: Annotated[str | None, Query(max_length=128)] = None) -> list[WebhookOut]:
        return [WebhookOut.of(s) for s in await hooks.list_subscriptions(project_id=project_id)]

    @api.get("/v1/webhooks/{subscription_id}", tags=["webhooks"], dependencies=v1)
    async def get_webhook(subscription_id: str) -> WebhookOut:
        return WebhookOut.of(await hooks.get_subscription(subscription_id))

    @api.delete("/v1/webhooks/{subscription_id}", status_code=204, tags=["webhooks"], dependencies=v1)
    async def delete_webhook(subscription_id: str) -> Response:
        await hooks.delete_subscription(subscription_id)
        return Response(status_code=204)

    @api.get("/v1/webhooks/{subscription_id}/deliveries", tags=["webhooks"], dependencies=v1)
    async def webhook_deliveries(
        subscription_id: str,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_STORED_INT, description="the seq of the first delivery of the page after")
        ] = None,
    ) -> list[DeliveryOut]:
        """The latest deliveries of one subscription (below ``before``), oldest first,
        with every attempt."""
        await hooks.get_subscription(subscription_id)
        found = await hooks.list_deliveries(subscription_id=subscription_id, limit=limit, before=before)
        return [DeliveryOut.of(d, await hooks.attempts(d.id)) for d in found]

    return api


def _requester(request: Request) -> str:
    """Who asked, as the job's history records it: the API and the client's address."""
    client = request.client
    return f"api:{client.host}" if client is not None else "api"


def _traceparent_of(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
