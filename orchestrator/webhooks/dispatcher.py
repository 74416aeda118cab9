"""The webhook dispatcher: sends the outbox, signed, retried, traced.

Several dispatchers (one per worker or server process) share the outbox: deliveries
are leased, and only the oldest pending delivery of a (subscription, job) is ever
leased, so deliveries for one job keep their order. Each attempt:

* POSTs the event as compact JSON with ``X-Orchestrator-Event``,
  ``X-Orchestrator-Delivery`` (unique id, for idempotency),
  ``X-Orchestrator-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256("<t>.<body>")>`` and a
  ``traceparent`` so the receiver can continue the trace;
* is a ``webhook.deliver`` span in the job's trace, linked to the job's root span with
  the lifecycle event it reports, a log record and two metric points;
* succeeds on 2xx; retries network errors, timeouts, 429 and 5xx with exponential
  backoff and full jitter (honouring ``Retry-After``) up to ``max_attempts``, then the
  delivery is dead with its last error; other statuses are not retried.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import httpx
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from orchestrator.domain import ErrorCategory, InvalidRequest, OrchestratorError, now_ns
from orchestrator.telemetry import JobTelemetry
from orchestrator.webhooks.models import Attempt, Delivery, DeliveryStatus, signature_header
from orchestrator.webhooks.store import WebhookStore
from otel import logs
from otel.vocabulary import Attr, OperationEvent, SpanName

__all__ = ["DispatcherConfig", "Outcome", "WebhookDispatcher", "check_url"]

log = logging.getLogger(__name__)

_USER_AGENT: Final = "orchestrator-webhooks/1"


class Outcome:
    DELIVERED: Final = "delivered"
    RETRY: Final = "retry"
    DEAD: Final = "dead"
    REFUSED: Final = "refused"


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    max_attempts: int = 8
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 300.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    #: Bytes of a response body read at most (the rest is discarded).
    max_response_bytes: int = 64 * 1024
    #: Allow loopback and private addresses (tests, trusted networks).
    allow_private: bool = False
    poll_seconds: float = 0.5
    batch: int = 16
    lease_seconds: float = 60.0


def check_url(url: str) -> str:
    """Validate a subscription URL at the edge: http(s), a host, no credentials, and one
    the HTTP client can send to (a bad port or host would otherwise fail in the dispatcher)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError when not a number in 0-65535
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidRequest(f"url: not a valid URL ({exc})", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("url: only http and https URLs are allowed", field="url")
    if not parts.hostname:
        raise InvalidRequest("url: has no host", field="url")
    if parts.username or parts.password:
        raise InvalidRequest("url: must not contain credentials (use the signing secret)", field="url")
    return url


async def _refused_address(host: str, port: int) -> str | None:
    """Why ``host`` must not be called (private, loopback, link-local...), or None."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return f"{host} resolves to a non-public address ({address})"
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _host(url: str) -> str:
    """The URL without credentials, path or query (which may carry tokens), for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class WebhookDispatcher:
    def __init__(
        self,
        store: WebhookStore,
        telemetry: JobTelemetry,
        config: DispatcherConfig = DispatcherConfig(),
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.config = config
        self.owner = f"dispatcher-{secrets.token_hex(4)}"
        self._client = client
        self._outage = logs.RateLimitedLog(10.0)

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with self._http() as client:
            while True:
                try:
                    sent = await self.dispatch_once(client)
                except OrchestratorError as exc:
                    if self._outage.ready():
                        logs.event(
                            log,
                            logging.WARNING,
                            OperationEvent.STORE_RETRY,
                            f"webhook outbox unavailable; retrying: {exc}",
                            operation="webhooks.dispatch",
                            suppressed=self._outage.take_suppressed(),
                        )
                    sent = 0
                if not sent:
                    await anyio.sleep(self.config.poll_seconds)

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
        return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def dispatch_once(self, client: httpx.AsyncClient) -> int:
        """Lease a batch of due deliveries and attempt each (in parallel: they belong to
        different jobs or subscriptions). Returns how many were attempted."""
        due = await self.store.claim_deliveries(
            owner=self.owner, now_ns=now_ns(), lease_ns=int(self.config.lease_seconds * 1e9), limit=self.config.batch
        )
        async with anyio.create_task_group() as tg:
            for delivery in due:
                tg.start_soon(self._attempt_safely, client, delivery)
        return len(due)

    async def _attempt_safely(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        """One delivery's failure must not stop the others or the dispatcher: an
        unexpected error is logged with its traceback and the delivery's lease left to
        expire, so it is retried later."""
        try:
            await self.attempt(client, delivery)
        except OrchestratorError as exc:  # the store failed: logged at its source
            if self._outage.ready():
                logs.event(
                    log,
                    logging.WARNING,
                    OperationEvent.STORE_RETRY,
                    f"webhook delivery {delivery.id} left for a retry: {exc}",
                    operation="webhooks.attempt",
                    delivery_id=delivery.id,
                    suppressed=self._outage.take_suppressed(),
                )
        except Exception as exc:  # noqa: BLE001 - never let one delivery stop dispatching
            logs.event(
                log,
                logging.ERROR,
                OperationEvent.ERROR,
                f"webhook delivery {delivery.id} failed unexpectedly: {exc}",
                exc_info=exc,
                operation="webhooks.attempt",
                job_id=delivery.job_id,
                project_id=delivery.project_id,
                event=delivery.event,
                delivery_id=delivery.id,
                error_category="internal",
            )

    async def attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> str:
        subscription = await self.store.get_subscription(delivery.subscription_id)
        number = delivery.attempts + 1
        root = SpanContext(
            int(delivery.trace_id, 16),
            int(delivery.root_span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if delivery.trace_sampled else TraceFlags.DEFAULT),
        )
        parent = trace.set_span_in_context(NonRecordingSpan(root))
        span = self.telemetry.tracer.start_span(
            SpanName.WEBHOOK_DELIVERY,
            context=parent,
            kind=SpanKind.CLIENT,
            links=[Link(root, {Attr.EVENT: delivery.event})],
            attributes={
                Attr.JOB_ID: delivery.job_id,
                Attr.PROJECT_ID: delivery.project_id,
                Attr.EVENT: delivery.event,
                "webhook.delivery_id": delivery.id,
                "webhook.subscription_id": delivery.subscription_id,
                Attr.ATTEMPT: number,
                "server.address": urlsplit(subscription.url).hostname or "",
            },
        )
        started, at = time.perf_counter(), now_ns()
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            outcome, code, error, delay = await self._send(client, subscription.url, subscription.secret, delivery)
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            final = outcome in (Outcome.DELIVERED, Outcome.DEAD, Outcome.REFUSED) or number >= self.config.max_attempts
            status = (
                DeliveryStatus.DELIVERED
                if outcome == Outcome.DELIVERED
                else DeliveryStatus.DEAD
                if final
                else DeliveryStatus.PENDING
            )
            recorded = outcome if status != DeliveryStatus.DEAD or outcome != Outcome.RETRY else Outcome.DEAD
            next_at = at if final else at + int(self._backoff(number, delay) * 1e9)
            attempt = Attempt(delivery.id, number, at, duration_ms, recorded, code, error)
            owned = await self.store.finish_attempt(
                delivery, attempt, owner=self.owner, status=status, next_attempt_ns=next_at
            )
            self._report(span, delivery, attempt, status, owned, subscription.url)
        return status

    async def _send(
        self, client: httpx.AsyncClient, url: str, secret: str, delivery: Delivery
    ) -> tuple[str, int | None, str | None, float | None]:
        """One POST: (outcome, status code, error, Retry-After seconds)."""
        try:
            check_url(url)  # a URL stored before validation tightened must not break the loop
        except InvalidRequest as exc:
            return Outcome.DEAD, None, f"invalid URL: {exc.message}", None
        parts = urlsplit(url)
        if not self.config.allow_private:
            why = await _refused_address(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            if why:
                return Outcome.REFUSED, None, f"refused: {why}", None
        body = delivery.body
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "X-Orchestrator-Event": delivery.event,
            "X-Orchestrator-Delivery": delivery.id,
            "X-Orchestrator-Signature": signature_header(secret, int(time.time()), body),
        }
        inject(headers)  # traceparent of the delivery span
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= self.config.max_response_bytes:
                        break  # the body is not needed: never read more than the cap
                code = response.status_code
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except httpx.TimeoutException as exc:
            return Outcome.RETRY, None, f"timeout: {type(exc).__name__}", None
        except httpx.HTTPError as exc:
            return Outcome.RETRY, None, f"{type(exc).__name__}: {exc}", None
        if 200 <= code < 300:
            return Outcome.DELIVERED, code, None, None
        if code == 429 or code >= 500:
            return Outcome.RETRY, code, f"HTTP {code}", retry_after
        return Outcome.DEAD, code, f"HTTP {code} (not retried)", None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.config.backoff_cap_seconds, self.config.backoff_base_seconds * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # jitter that still grows
        if retry_after is not None:
            delay = max(delay, min(retry_after, 3600.0))
        return delay

    def _report(
        self, span: trace.Span, delivery: Delivery, attempt: Attempt, status: str, owned: bool, url: str
    ) -> None:
        span.set_attribute(Attr.OUTCOME, attempt.outcome)
        if attempt.status_code is not None:
            span.set_attribute("http.response.status_code", attempt.status_code)
        if attempt.outcome != Outcome.DELIVERED:
            span.set_status(Status(StatusCode.ERROR, attempt.error))
            span.set_attribute(Attr.ERROR_TYPE, str(attempt.status_code or ErrorCategory.WEBHOOK))
        level = (
            logging.INFO
            if attempt.outcome == Outcome.DELIVERED
            else (logging.ERROR if status == DeliveryStatus.DEAD else logging.WARNING)
        )
        logs.event(
            log,
            level,
            OperationEvent.WEBHOOK_DELIVERY,
            f"webhook {delivery.event} to {_host(url)}: {attempt.outcome}"
            + (f" ({attempt.error})" if attempt.error else "")
            + ("" if owned else "; lease lost, another dispatcher took it over"),
            job_id=delivery.job_id,
            project_id=delivery.project_id,
            event=delivery.event,
            outcome=attempt.outcome,
            attempt=attempt.attempt,
            status_code=attempt.status_code,
            delivery_id=delivery.id,
            delivery_status=status,
            duration_ms=attempt.duration_ms,
        )
        self.telemetry.webhook_attempt(attempt.outcome, attempt.duration_ms / 1000, dead=status == DeliveryStatus.DEAD)
