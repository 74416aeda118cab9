"""Webhook subscriptions, deliveries, attempts, and the signature scheme."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from otel.vocabulary import LifecycleEvent

__all__ = [
    "SUBSCRIBABLE_EVENTS",
    "Attempt",
    "Delivery",
    "DeliveryStatus",
    "Subscription",
    "display_url",
    "sign",
    "signature_header",
    "url_fingerprint",
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

    def __repr__(self) -> str:  # keep the secret (and the URL's) out of reprs, tracebacks and debuggers
        return (
            f"Subscription(id={self.id!r}, project_id={self.project_id!r}, url={display_url(self.url)!r}, "
            f"events={self.events!r})"
        )


def display_url(url: str) -> str:
    """What a subscription URL shows to clients, logs and terminals: ``scheme://host[:port]``
    and ``/…`` when there is more. Paths and queries often hold the URL's secret (Slack-style
    hooks), so they are never shown; :func:`url_fingerprint` tells two URLs apart."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]  # never userinfo
    except ValueError:
        return "(invalid URL)"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else "/"
    return f"{parts.scheme}://{netloc}{rest}"


def url_fingerprint(url: str) -> str:
    """The first 16 hex digits of the URL's SHA-256: an operator recognises a URL with
    ``printf %s "$URL" | sha256sum | cut -c1-16``, a client learns nothing from it."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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
