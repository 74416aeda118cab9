"""Job stores: the ``JobStore`` port and its SQLite and PostgreSQL adapters."""

from __future__ import annotations

from orchestrator.stores.base import JobStore

__all__ = ["JobStore"]
