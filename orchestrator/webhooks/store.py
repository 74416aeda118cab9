"""Webhook persistence beside the job store: subscriptions, the outbox, attempts.

The outbox rows themselves are written by the database, in the statement of the
transition they report (the ``job_history_outbox`` trigger of the schema); this module
reads and updates them over the job store's connector, with the same named queries on
both databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from orchestrator.domain import JobNotFound
from orchestrator.domain.values import canonical_reason, check_client_text, storable
from orchestrator.serialization import timestamp
from orchestrator.stores import JobStore, rows
from orchestrator.stores.connector import Connector, Row
from orchestrator.webhooks.models import Attempt, Delivery, Subscription

__all__ = ["SQLWebhookStore", "WebhookNotFound", "WebhookStore", "webhook_store"]


class WebhookNotFound(JobNotFound):
    """No webhook subscription with that id."""

    def __init__(self, subscription_id: str) -> None:
        super().__init__(subscription_id)
        self.message = f"no webhook subscription with id {subscription_id!r}"
        self.args = (self.message,)


class WebhookStore(Protocol):
    async def add_subscription(self, subscription: Subscription) -> None: ...

    async def get_subscription(self, subscription_id: str) -> Subscription: ...

    async def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]: ...

    async def delete_subscription(self, subscription_id: str) -> None: ...

    async def claim_deliveries(
        self, *, owner: str, now_ns: int, lease_ns: int, limit: int, busy: Sequence[str] = ()
    ) -> list[Delivery]:
        """Lease due deliveries, each the oldest pending one of its (subscription, job),
        none of the ``busy`` subscriptions (those whose receivers have all the attempts
        they may have in flight)."""

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, *, owner: str, status: str, next_attempt_ns: int
    ) -> bool:
        """Record an attempt and the delivery's new state; False when the lease was lost."""

    async def list_deliveries(
        self,
        *,
        job_id: str | None = None,
        subscription_id: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Delivery]:
        """The latest ``limit`` deliveries matching the filters, in outbox order; with
        ``before``, those below that ``seq`` (the first ``seq`` of the page after)."""
        ...

    async def attempts(self, delivery_id: str) -> list[Attempt]: ...


def webhook_store(store: JobStore) -> WebhookStore:
    """The webhook store that shares ``store``'s database (through its connector)."""
    connector: Connector | None = getattr(store, "connector", None)
    if connector is None:
        raise TypeError(f"{type(store).__name__} has no database connector to share")
    return SQLWebhookStore(connector)


def _subscription(row: Row) -> Subscription:
    return Subscription(
        id=row["id"],
        project_id=row["project_id"],
        url=row["url"],
        secret=row["secret"],
        events=tuple(rows.json_value(row["events"])),
        created_ns=row["created_ns"],
    )


def payload(row: Row) -> dict[str, Any]:
    """The body of a delivery: the history row it reports, with the job's ids. (Rows
    written before the outbox carried the history's fields hold their payload whole.)"""
    if row["history_seq"] is None:
        return dict(rows.json_value(row["payload"]))
    return {
        "event": row["event"],
        "job_id": row["job_id"],
        "project_id": row["project_id"],
        "status_from": row["status_from"],
        "status_to": row["status_to"],
        "reason": row["reason"],
        "timestamp": timestamp(row["at_ns"]),
        "attempt": row["attempt"],
        "trace_id": row["trace_id"],
    }


def _delivery(row: Row) -> Delivery:
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        subscription_id=row["subscription_id"],
        job_id=row["job_id"],
        project_id=row["project_id"],
        event=row["event"],
        payload=payload(row),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_ns=row["next_attempt_ns"],
        created_ns=row["created_ns"],
        finished_ns=row["finished_ns"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        trace_id=row["trace_id"],
        root_span_id=row["root_span_id"],
        trace_sampled=bool(row["trace_sampled"]),
    )


def _attempt(row: Row) -> Attempt:
    return Attempt(
        delivery_id=row["delivery_id"],
        attempt=row["attempt"],
        at_ns=row["at_ns"],
        duration_ms=row["duration_ms"],
        outcome=row["outcome"],
        status_code=row["status_code"],
        error=row["error"],
    )


class SQLWebhookStore:
    """The :class:`WebhookStore` over a job store's connector (either database)."""

    def __init__(self, connector: Connector) -> None:
        self._db = connector

    async def add_subscription(self, subscription: Subscription) -> None:
        # Kept as given (a secret must sign as typed), so refused when no store can hold
        # it: a NUL (PostgreSQL) or a lone surrogate (either), never a store error.
        check_client_text(subscription.secret, "secret")
        check_client_text(subscription.url, "url")
        params = {
            "id": subscription.id,
            "project_id": subscription.project_id,
            "url": subscription.url,
            "secret": subscription.secret,
            "events": rows.json_text(list(subscription.events)),
            "created_ns": subscription.created_ns,
        }
        await self._db.fetchall("webhook_insert_subscription", params)

    async def get_subscription(self, subscription_id: str) -> Subscription:
        if not storable(subscription_id):
            raise WebhookNotFound(subscription_id)
        row = await self._db.fetchone("webhook_get_subscription", {"id": subscription_id})
        if row is None:
            raise WebhookNotFound(subscription_id)
        return _subscription(row)

    async def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]:
        if project_id is not None and not storable(project_id):
            return []
        found = await self._db.fetchall("webhook_list_subscriptions", {"project_id": project_id})
        return [_subscription(r) for r in found]

    async def delete_subscription(self, subscription_id: str) -> None:
        params = {"id": subscription_id}
        if not storable(subscription_id) or await self._db.fetchone("webhook_delete_subscription", params) is None:
            raise WebhookNotFound(subscription_id)

    async def claim_deliveries(
        self, *, owner: str, now_ns: int, lease_ns: int, limit: int, busy: Sequence[str] = ()
    ) -> list[Delivery]:
        params = {
            "owner": owner,
            "now_ns": now_ns,
            "expires_ns": now_ns + lease_ns,
            "limit": limit,
            "busy": [s for s in busy if storable(s)],
        }
        found = await self._db.fetchall("webhook_claim", params)
        return sorted((_delivery(r) for r in found), key=lambda d: d.seq)

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, *, owner: str, status: str, next_attempt_ns: int
    ) -> bool:
        params = {
            "id": delivery.id,
            "owner": owner,
            "attempt": attempt.attempt,
            "status": status,
            "next_attempt_ns": next_attempt_ns,
            "status_code": attempt.status_code,
            "error": attempt.error and canonical_reason(attempt.error),
            "outcome": attempt.outcome,
            "duration_ms": attempt.duration_ms,
            "at_ns": attempt.at_ns,
        }
        # The database records the attempt (webhook_attempts) in the same statement.
        return await self._db.fetchone("webhook_finish_attempt", params) is not None

    async def list_deliveries(
        self,
        *,
        job_id: str | None = None,
        subscription_id: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Delivery]:
        if not all(storable(v) for v in (job_id, subscription_id) if v is not None):
            return []
        params = {"job_id": job_id, "subscription_id": subscription_id, "limit": limit, "before": before}
        # Each filter leads through its own index (an optional filter cannot use one).
        if job_id is not None:
            found = await self._db.fetchall("webhook_list_deliveries_by_job", params)
        elif subscription_id is not None:
            found = await self._db.fetchall("webhook_list_deliveries_by_subscription", params)
        else:
            found = await self._db.fetchall("webhook_list_deliveries", params)
        return [_delivery(r) for r in found]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        return [_attempt(r) for r in await self._db.fetchall("webhook_attempts", {"id": delivery_id})]
