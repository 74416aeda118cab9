"""Webhook subscriptions, deliveries, attempts, and the signature scheme."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from otel.vocabulary import LifecycleEvent

__all__ = [
    "SUBSCRIBABLE_EVENTS",
    "Attempt",
    "Delivery",
    "DeliveryStatus",
    "Subscription",
    "sign",
    "signature_header",
    "verify",
]

#: The lifecycle events a subscription may ask for.
SUBSCRIBABLE_EVENTS: Final = tuple(
    str(e)
    for e in (
        LifecycleEvent.ENQUEUE,
        LifecycleEvent.START,
        LifecycleEvent.COMPLETE,
        LifecycleEvent.FAIL,
        LifecycleEvent.CANCEL,
        LifecycleEvent.RECOVER,
    )
)


class DeliveryStatus:
    PENDING: Final = "pending"
    DELIVERED: Final = "delivered"
    DEAD: Final = "dead"


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    project_id: str
    url: str
    #: Never returned by the API, logged or exported.
    secret: str
    events: tuple[str, ...]
    created_ns: int

    def __repr__(self) -> str:  # keep the secret out of reprs, tracebacks and debuggers
        return f"Subscription(id={self.id!r}, project_id={self.project_id!r}, events={self.events!r})"


@dataclass(frozen=True, slots=True)
class Delivery:
    seq: int
    id: str
    subscription_id: str
    job_id: str
    project_id: str
    event: str
    payload: Mapping[str, Any]
    status: str
    attempts: int
    next_attempt_ns: int
    created_ns: int
    finished_ns: int | None
    last_status_code: int | None
    last_error: str | None
    trace_id: str
    root_span_id: str
    trace_sampled: bool

    @property
    def body(self) -> bytes:
        """The exact bytes sent (and signed): compact JSON with sorted keys."""
        return json.dumps(dict(self.payload), separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: str
    attempt: int
    at_ns: int
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with the subscription's secret."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: parse ``t=...,v1=...``, check freshness and the HMAC."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), parts.get("v1", ""))
