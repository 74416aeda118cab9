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
* succeeds on 2xx; retries network errors (a host that does not resolve included),
  timeouts, 429 and 5xx with exponential backoff and full jitter (honouring
  ``Retry-After``) up to ``max_attempts``, then the delivery is dead with its last error;
  other statuses are not retried;
* goes only where :mod:`orchestrator.webhooks.targets` allows, to the address that was
  checked, and ends at a hard deadline (resolving, connecting, sending and reading all
  count: a receiver trickling its answer cannot hold it longer).

:meth:`WebhookDispatcher.run` keeps up to ``concurrency`` attempts in flight, at most
``per_subscription`` of them for one subscription: a slow or dead receiver takes its own
slots and never delays the deliveries of other subscriptions.
"""

from __future__ import annotations

import email.utils
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from orchestrator.domain import ErrorCategory, InvalidRequest, OrchestratorError, now_ns
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from orchestrator.webhooks.models import Attempt, Delivery, DeliveryStatus, display_url, signature_header
from orchestrator.webhooks.store import WebhookStore
from orchestrator.webhooks.targets import (
    RefusedTarget,
    Resolver,
    Target,
    UnresolvableHost,
    parse_target,
    pin,
    resolve_public,
    system_resolver,
)
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
    #: Hard deadline of one attempt: resolving, connecting, sending, reading.
    attempt_deadline: float = 10.0
    connect_timeout: float = 5.0
    #: Bytes of a response body read at most (the rest is discarded).
    max_response_bytes: int = 64 * 1024
    #: Allow loopback and private addresses (tests, trusted networks): all, or those of
    #: the host names in ``private_hosts``.
    allow_private: bool = False
    private_hosts: frozenset[str] = frozenset()
    poll_seconds: float = 0.5
    #: Deliveries claimed at once by :meth:`WebhookDispatcher.dispatch_once`.
    batch: int = 16
    #: Attempts in flight in :meth:`WebhookDispatcher.run`, in all and per subscription.
    concurrency: int = 32
    per_subscription: int = 4
    #: A delivery's lease; never shorter than the attempt deadline plus 2 s, so an attempt
    #: ends before another dispatcher may take the delivery over. A delivery claimed while
    #: its subscription has no free slot is left leased: it waits this long.
    lease_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatcherConfig:
        return cls(
            max_attempts=settings.webhook_max_attempts,
            backoff_base_seconds=settings.webhook_backoff_seconds,
            attempt_deadline=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private,
            private_hosts=settings.webhook_private_hosts,
            concurrency=settings.webhook_concurrency,
            per_subscription=settings.webhook_concurrency_per_subscription,
        )

    @property
    def lease_ns(self) -> int:
        return int(max(self.lease_seconds, self.attempt_deadline + 2.0) * 1e9)


def check_url(url: str) -> str:
    """Validate a subscription URL's form (scheme, host, no credentials, canonical
    numbers); :func:`orchestrator.webhooks.targets.check_subscription_url` also checks
    where it leads."""
    parse_target(url)
    return url


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class WebhookDispatcher:
    def __init__(
        self,
        store: WebhookStore,
        telemetry: JobTelemetry,
        config: DispatcherConfig = DispatcherConfig(),
        *,
        client: httpx.AsyncClient | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.config = config
        self.owner = f"dispatcher-{secrets.token_hex(4)}"
        self._client = client
        self._resolver = resolver
        self._outage = logs.RateLimitedLog(10.0)
        self._busy: Counter[str] = Counter()  # attempts in flight per subscription
        self._in_flight = 0
        self._freed = anyio.Event()

    async def run(self) -> None:
        """Deliver until cancelled, keeping up to ``concurrency`` attempts in flight."""
        async with self._http() as client, anyio.create_task_group() as attempts:
            while True:
                free = self.config.concurrency - self._in_flight
                if free <= 0:
                    self._freed = anyio.Event()
                    await self._freed.wait()
                    continue
                claimed, started = await self._start_due(client, attempts, free)
                if claimed < free or not started:
                    await anyio.sleep(self.config.poll_seconds)

    async def _start_due(self, client: httpx.AsyncClient, attempts: anyio.abc.TaskGroup, limit: int) -> tuple[int, int]:
        """Claim up to ``limit`` due deliveries and start those whose subscription has a
        free slot. The others stay leased and come back when their lease expires: the
        store has no way to hand a claim back, and a slow subscription must not fill
        every slot. Returns (claimed, started)."""
        try:
            due = await self._claim(limit)
        except OrchestratorError as exc:
            self._warn_outage(f"webhook outbox unavailable; retrying: {exc}", "webhooks.dispatch")
            return 0, 0
        started = 0
        for delivery in due:
            if self._busy[delivery.subscription_id] >= self.config.per_subscription:
                continue
            self._busy[delivery.subscription_id] += 1
            self._in_flight += 1
            started += 1
            attempts.start_soon(self._attempt_in_slot, client, delivery)
        return len(due), started

    async def _attempt_in_slot(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            await self._attempt_safely(client, delivery)
        finally:
            self._busy[delivery.subscription_id] -= 1
            if self._busy[delivery.subscription_id] <= 0:
                del self._busy[delivery.subscription_id]
            self._in_flight -= 1
            self._freed.set()

    def _warn_outage(self, message: str, operation: str) -> None:
        if self._outage.ready():
            logs.event(
                log,
                logging.WARNING,
                OperationEvent.STORE_RETRY,
                message,
                operation=operation,
                suppressed=self._outage.take_suppressed(),
            )

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        return self.http_client()

    def http_client(self) -> httpx.AsyncClient:
        """The client of :meth:`run`: no proxies from the environment (they would connect
        elsewhere than the checked address), no redirects, and no keep-alive (a pooled
        connection is keyed by address: two host names on one address must never share
        a TLS connection)."""
        timeout = httpx.Timeout(
            self.config.attempt_deadline, connect=min(self.config.connect_timeout, self.config.attempt_deadline)
        )
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0), retries=0)
        return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)

    async def _claim(self, limit: int) -> list[Delivery]:
        # Subscriptions with every slot taken are left out: their deliveries stay unleased
        # (not claimed to sit out a lease) until a slot frees.
        busy = [s for s, n in self._busy.items() if n >= self.config.per_subscription]
        return await self.store.claim_deliveries(
            owner=self.owner, now_ns=now_ns(), lease_ns=self.config.lease_ns, limit=limit, busy=busy
        )

    async def dispatch_once(self, client: httpx.AsyncClient) -> int:
        """Claim one batch of due deliveries, attempt them in parallel and wait for all
        (tests and tools; :meth:`run` does not wait). Returns how many were claimed."""
        due = await self._claim(self.config.batch)
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
                Attr.WEBHOOK_DELIVERY_ID: delivery.id,
                Attr.WEBHOOK_SUBSCRIPTION_ID: delivery.subscription_id,
                Attr.ATTEMPT: number,
                Attr.SERVER_ADDRESS: urlsplit(subscription.url).hostname or "",
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
        """One POST within the attempt deadline: (outcome, status code, error, Retry-After seconds)."""
        try:
            target = parse_target(url)  # a URL stored before validation tightened must not break the loop
        except InvalidRequest as exc:
            return Outcome.DEAD, None, f"invalid URL: {exc.message}", None
        deadline = self.config.attempt_deadline
        try:
            with anyio.fail_after(deadline):
                return await self._post(client, target, secret, delivery)
        except TimeoutError:
            return Outcome.RETRY, None, f"timeout: no complete answer within the {deadline:g} s deadline", None
        except RefusedTarget as exc:
            return Outcome.REFUSED, None, f"refused: {exc}", None
        except UnresolvableHost as exc:
            return Outcome.RETRY, None, str(exc), None
        except httpx.TimeoutException as exc:
            return Outcome.RETRY, None, f"timeout: {type(exc).__name__}", None
        except httpx.HTTPError as exc:
            # Never the URL: its path or query may be the subscription's secret.
            message = str(exc).replace(url, display_url(url))
            return Outcome.RETRY, None, f"{type(exc).__name__}: {message}", None

    async def _post(
        self, client: httpx.AsyncClient, target: Target, secret: str, delivery: Delivery
    ) -> tuple[str, int | None, str | None, float | None]:
        # Resolved once, checked, and connected to: no second lookup can rebind the name.
        address = await resolve_public(
            target,
            allow_private=self.config.allow_private,
            private_hosts=self.config.private_hosts,
            resolver=self._resolver,
        )
        pinned = pin(target, address)
        body = delivery.body
        headers = {
            "Host": pinned.host_header,
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "X-Orchestrator-Event": delivery.event,
            "X-Orchestrator-Delivery": delivery.id,
            "X-Orchestrator-Signature": signature_header(secret, int(time.time()), body),
        }
        inject(headers)  # traceparent of the delivery span
        async with client.stream(
            "POST", pinned.url, content=body, headers=headers, extensions=pinned.extensions
        ) as response:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= self.config.max_response_bytes:
                    break  # the body is not needed: never read more than the cap
            code = response.status_code
            retry_after = _retry_after(response.headers.get("Retry-After"))
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
            span.set_attribute(Attr.HTTP_RESPONSE_STATUS_CODE, attempt.status_code)
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
            f"webhook {delivery.event} to {display_url(url)}: {attempt.outcome}"
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
