"""Webhooks: subscriptions, the outbox's deliveries and their dispatcher (an adapter)."""

from __future__ import annotations

__all__: list[str] = []
