"""Webhook persistence beside each job store: subscriptions, the outbox, attempts.

The outbox rows themselves are written by the job stores, in the transaction of the
transition they report (see ``insert_outbox`` in ``queries/sqlite.sql`` and the
``outbox`` CTE in ``queries/postgres.sql``); this module reads and updates them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator.stores import JobStore, rows, sql
from orchestrator.stores.postgres import PostgresJobStore, fetchall, fetchone
from orchestrator.stores.sqlite import SQLiteJobStore, transaction
from orchestrator.webhooks.models import Attempt, Delivery, Subscription

__all__ = ["WebhookNotFound", "WebhookStore", "webhook_store"]

from orchestrator.domain import JobNotFound


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

    async def claim_deliveries(self, *, owner: str, now_ns: int, lease_ns: int, limit: int) -> list[Delivery]:
        """Lease due deliveries, each the oldest pending one of its (subscription, job)."""

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, *, owner: str, status: str, next_attempt_ns: int
    ) -> bool:
        """Record an attempt and the delivery's new state; False when the lease was lost."""

    async def list_deliveries(
        self, *, job_id: str | None = None, subscription_id: str | None = None, limit: int = 100
    ) -> list[Delivery]: ...

    async def attempts(self, delivery_id: str) -> list[Attempt]: ...


def webhook_store(store: JobStore) -> WebhookStore:
    """The webhook store that shares ``store``'s database."""
    if isinstance(store, SQLiteJobStore):
        return SQLiteWebhookStore(store)
    if isinstance(store, PostgresJobStore):
        return PostgresWebhookStore(store)
    raise TypeError(f"no webhook store for {type(store).__name__}")


def _subscription(row: Mapping[str, Any]) -> Subscription:
    return Subscription(
        id=row["id"],
        project_id=row["project_id"],
        url=row["url"],
        secret=row["secret"],
        events=tuple(rows.json_value(row["events"])),
        created_ns=row["created_ns"],
    )


def _delivery(row: Mapping[str, Any]) -> Delivery:
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        subscription_id=row["subscription_id"],
        job_id=row["job_id"],
        project_id=row["project_id"],
        event=row["event"],
        payload=rows.json_value(row["payload"]),
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


def _attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        delivery_id=row["delivery_id"],
        attempt=row["attempt"],
        at_ns=row["at_ns"],
        duration_ms=row["duration_ms"],
        outcome=row["outcome"],
        status_code=row["status_code"],
        error=row["error"],
    )


def _subscription_params(s: Subscription) -> dict[str, Any]:
    return {
        "id": s.id,
        "project_id": s.project_id,
        "url": s.url,
        "secret": s.secret,
        "events": json.dumps(list(s.events)),
        "created_ns": s.created_ns,
    }


def _finish_params(
    delivery: Delivery, attempt: Attempt, owner: str, status: str, next_attempt_ns: int
) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "owner": owner,
        "attempt": attempt.attempt,
        "status": status,
        "next_attempt_ns": next_attempt_ns,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "at_ns": attempt.at_ns,
        "duration_ms": attempt.duration_ms,
        "outcome": attempt.outcome,
    }


def _filters(job_id: str | None, subscription_id: str | None, mark: str) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    if job_id is not None:
        clauses.append(mark.format("job_id"))
        params["job_id"] = job_id
    if subscription_id is not None:
        clauses.append(mark.format("subscription_id"))
        params["subscription_id"] = subscription_id
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


class SQLiteWebhookStore:
    _Q = sql.queries("sqlite")

    def __init__(self, store: SQLiteJobStore) -> None:
        self._store = store

    async def add_subscription(self, subscription: Subscription) -> None:
        params = _subscription_params(subscription)

        def add(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(self._Q["webhook_insert_subscription"], params)

        await self._store.run("webhook_add", add)

    async def get_subscription(self, subscription_id: str) -> Subscription:
        query = self._Q["webhook_get_subscription"]
        row = await self._store.run("webhook_get", lambda c: c.execute(query, {"id": subscription_id}).fetchone())
        if row is None:
            raise WebhookNotFound(subscription_id)
        return _subscription(row)

    async def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]:
        where = "WHERE project_id = :project_id" if project_id is not None else ""
        query = f"SELECT * FROM webhook_subscriptions {where} ORDER BY created_ns, id"  # noqa: S608 - fixed clause
        found = await self._store.run("webhook_list", lambda c: c.execute(query, {"project_id": project_id}).fetchall())
        return [_subscription(r) for r in found]

    async def delete_subscription(self, subscription_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> Any:
            with transaction(conn):
                return conn.execute(self._Q["webhook_delete_subscription"], {"id": subscription_id}).fetchone()

        if await self._store.run("webhook_delete", delete) is None:
            raise WebhookNotFound(subscription_id)

    async def claim_deliveries(self, *, owner: str, now_ns: int, lease_ns: int, limit: int) -> list[Delivery]:
        params = {"owner": owner, "now_ns": now_ns, "expires_ns": now_ns + lease_ns, "limit": limit}

        def claim(conn: sqlite3.Connection) -> list[Any]:
            with transaction(conn):
                return conn.execute(self._Q["webhook_claim"], params).fetchall()

        return sorted((_delivery(r) for r in await self._store.run("webhook_claim", claim)), key=lambda d: d.seq)

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, *, owner: str, status: str, next_attempt_ns: int
    ) -> bool:
        params = _finish_params(delivery, attempt, owner, status, next_attempt_ns)

        def finish(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                if conn.execute(self._Q["webhook_finish_attempt"], params).fetchone() is None:
                    return False
                conn.execute(self._Q["webhook_insert_attempt"], params)
                return True

        return await self._store.run("webhook_finish", finish)

    async def list_deliveries(
        self, *, job_id: str | None = None, subscription_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        where, params = _filters(job_id, subscription_id, "{0} = :{0}")
        params["limit"] = limit
        query = f"SELECT * FROM webhook_deliveries {where} ORDER BY seq LIMIT :limit"  # noqa: S608 - fixed clauses
        found = await self._store.run("webhook_deliveries", lambda c: c.execute(query, params).fetchall())
        return [_delivery(r) for r in found]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        query = self._Q["webhook_attempts"]
        found = await self._store.run("webhook_attempts", lambda c: c.execute(query, {"id": delivery_id}).fetchall())
        return [_attempt(r) for r in found]


class PostgresWebhookStore:
    _Q = sql.queries("postgres")

    def __init__(self, store: PostgresJobStore) -> None:
        self._store = store

    async def add_subscription(self, subscription: Subscription) -> None:
        async with self._store.connection("webhook_add") as conn:
            await conn.execute(self._Q["webhook_insert_subscription"], _subscription_params(subscription))

    async def get_subscription(self, subscription_id: str) -> Subscription:
        async with self._store.connection("webhook_get") as conn:
            row = await fetchone(conn, self._Q["webhook_get_subscription"], {"id": subscription_id})
        if row is None:
            raise WebhookNotFound(subscription_id)
        return _subscription(row)

    async def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]:
        where = "WHERE project_id = %(project_id)s" if project_id is not None else ""
        query = f"SELECT * FROM webhook_subscriptions {where} ORDER BY created_ns, id"  # noqa: S608 - fixed clause
        async with self._store.connection("webhook_list") as conn:
            found = await fetchall(conn, query, {"project_id": project_id})
        return [_subscription(r) for r in found]

    async def delete_subscription(self, subscription_id: str) -> None:
        async with self._store.connection("webhook_delete") as conn:
            row = await fetchone(conn, self._Q["webhook_delete_subscription"], {"id": subscription_id})
        if row is None:
            raise WebhookNotFound(subscription_id)

    async def claim_deliveries(self, *, owner: str, now_ns: int, lease_ns: int, limit: int) -> list[Delivery]:
        params = {"owner": owner, "now_ns": now_ns, "expires_ns": now_ns + lease_ns, "limit": limit}
        async with self._store.connection("webhook_claim") as conn:
            found = await fetchall(conn, self._Q["webhook_claim"], params)
        return sorted((_delivery(r) for r in found), key=lambda d: d.seq)

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, *, owner: str, status: str, next_attempt_ns: int
    ) -> bool:
        params = _finish_params(delivery, attempt, owner, status, next_attempt_ns)
        async with self._store.connection("webhook_finish") as conn, conn.transaction():
            if await fetchone(conn, self._Q["webhook_finish_attempt"], params) is None:
                return False
            await conn.execute(self._Q["webhook_insert_attempt"], params)
            return True

    async def list_deliveries(
        self, *, job_id: str | None = None, subscription_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        where, params = _filters(job_id, subscription_id, "{0} = %({0})s")
        params["limit"] = limit
        query = f"SELECT * FROM webhook_deliveries {where} ORDER BY seq LIMIT %(limit)s"  # noqa: S608 - fixed clauses
        async with self._store.connection("webhook_deliveries") as conn:
            found = await fetchall(conn, query, params)
        return [_delivery(r) for r in found]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        async with self._store.connection("webhook_attempts") as conn:
            found = await fetchall(conn, self._Q["webhook_attempts"], {"id": delivery_id})
        return [_attempt(r) for r in found]
