"""The HTTP API: create, inspect and cancel jobs; manage webhook subscriptions.

Errors share one JSON body, ``{"error": {"status", "code", "message", "field"}}``:
422 names the invalid field, 404 an unknown job or subscription, 409 an illegal
transition, 413 a body over the limit, 401 a missing or wrong bearer token (when
``ORCHESTRATOR_API_TOKEN`` is set), 503 a store that cannot be reached. A client error
is never a 500.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import __version__
from orchestrator.api.schemas import (
    DeliveryOut,
    ErrorBody,
    EventOut,
    JobCreate,
    JobOut,
    JobPage,
    WebhookCreate,
    WebhookOut,
)
from orchestrator.bootstrap import App
from orchestrator.domain import (
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    JobStatus,
    OrchestratorError,
    PersistenceError,
    now_ns,
)
from orchestrator.telemetry import parse_traceparent
from orchestrator.webhooks.dispatcher import check_url
from orchestrator.webhooks.models import Subscription
from orchestrator.webhooks.store import WebhookStore, webhook_store
from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["TRACE_HEADER", "create_api"]

log = logging.getLogger(__name__)

TRACE_HEADER = "X-Trace-Id"
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 503)}


def _error(status_code: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": {"status": status_code, "code": code, "message": message, "field": field}}
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(body, status_code=status_code, headers=headers)


class BodyLimit:
    """413 for request bodies over ``limit`` bytes, announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = _error(413, "body_too_large", f"request body over {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        # Read the body before the app sees it: an exception raised from ``receive``
        # would reach FastAPI's body parsing, which turns it into a 400.
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: the app sees it
            received += len(message.get("body", b""))
            if received > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def create_api(app: App, *, token: str | None = None, max_body_bytes: int = 1024 * 1024) -> FastAPI:
    """The FastAPI application around an opened :class:`App`."""
    hooks: WebhookStore = webhook_store(app.store)
    api = FastAPI(
        title="orchestrator",
        version=__version__,
        description="Analysis jobs, observable end to end with OpenTelemetry.",
        responses=_ERRORS,
    )
    api.add_middleware(BodyLimit, limit=max_body_bytes)
    _install_error_handlers(api)

    async def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise _Unauthorized

    v1 = [Depends(authorize)]

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, str]:
        """The store is reachable."""
        await app.store.ping()
        return {"status": "ready", "store": app.store.backend}

    @api.post("/v1/jobs", status_code=201, tags=["jobs"], dependencies=v1)
    async def create_job(body: JobCreate, response: Response) -> JobOut:
        """Create a job and queue it. The response carries its trace id (also in ``X-Trace-Id``)."""
        request_span = trace.get_current_span()
        caller = _traceparent_of(request_span)
        job = await app.create.execute({**body.model_dump(), "traceparent": caller})
        root = parse_traceparent(job.trace.traceparent)
        if root is not None and request_span.is_recording():
            request_span.add_link(root, {"link.kind": "job"})
            request_span.set_attribute("job_id", job.id)
        response.headers[TRACE_HEADER] = job.trace.trace_id
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobOut.of(job)

    @api.get("/v1/jobs", tags=["jobs"], dependencies=v1)
    async def list_jobs(
        project_id: Annotated[str | None, Query(max_length=128)] = None,
        status_: Annotated[JobStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
    ) -> JobPage:
        """Jobs newest first, filtered by project and status, one page at a time."""
        found = await app.store.list_jobs(status=status_, project_id=project_id, limit=limit + 1, after=cursor)
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
        job_id: str, response: Response, reason: Annotated[str, Query(max_length=500)] = "cancelled via API"
    ) -> JobOut:
        """Cancel a job: at once when pending or queued (200), or ask its worker to stop it
        (202: it ends Cancelled within a bounded time). 409 when it already finished."""
        job = await app.workflow.cancel(job_id, reason=reason)
        response.status_code = 202 if job.status is JobStatus.RUNNING else 200
        response.headers[TRACE_HEADER] = job.trace.trace_id
        return JobOut.of(job)

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
        """Subscribe a URL to a project's lifecycle events. The secret is never returned."""
        subscription = Subscription(
            id=secrets.token_hex(8),
            project_id=body.project_id,
            url=check_url(body.url),
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
        subscription_id: str, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> list[DeliveryOut]:
        """Deliveries of one subscription with every attempt (the delivery history)."""
        await hooks.get_subscription(subscription_id)
        found = await hooks.list_deliveries(subscription_id=subscription_id, limit=limit)
        return [DeliveryOut.of(d, await hooks.attempts(d.id)) for d in found]

    return api


class _Unauthorized(Exception):
    pass


def _traceparent_of(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _install_error_handlers(api: FastAPI) -> None:
    Handler = Callable[[Request, Any], Awaitable[JSONResponse]]

    def on(exc_type: type[Exception]) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            api.add_exception_handler(exc_type, fn)
            return fn

        return register

    @on(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return _error(422, "validation_error", message, field)

    @on(InvalidRequest)
    async def invalid_request(_: Request, exc: InvalidRequest) -> JSONResponse:
        return _error(422, "validation_error", exc.message, exc.field)

    @on(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return _error(404, "not_found", exc.message)

    @on(IllegalTransition)
    async def conflict(_: Request, exc: IllegalTransition) -> JSONResponse:
        return _error(409, "illegal_transition", exc.message)

    @on(PersistenceError)
    async def unavailable(_: Request, exc: PersistenceError) -> JSONResponse:
        return _error(503, "store_unavailable", "the job store is unavailable; retry later")

    @on(OrchestratorError)
    async def other(_: Request, exc: OrchestratorError) -> JSONResponse:
        return _error(500, str(exc.category), exc.message)

    @on(_Unauthorized)
    async def unauthorized(_: Request, exc: _Unauthorized) -> JSONResponse:
        return _error(401, "unauthorized", "a valid bearer token is required")

    @on(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body" (a body that is not UTF-8, say): malformed
            # JSON like any other, so the documented 422 rather than an undocumented 400.
            return _error(422, "validation_error", f"request body is not valid JSON: {exc.__cause__}")
        return _error(exc.status_code, "http_error", str(exc.detail))

    @on(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        logs.event(
            log,
            logging.ERROR,
            OperationEvent.ERROR,
            f"unhandled API error: {exc}",
            exc_info=exc,
            operation="api",
            error_category="internal",
        )
        return _error(500, "internal", "internal error")
