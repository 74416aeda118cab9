"""Job and subscription ids as people type them: whole, or (with a store that can look
them up by prefix) any unique prefix, as git and docker users expect."""

from __future__ import annotations

from orchestrator.domain import Job
from orchestrator.stores import JobStore

__all__ = ["resolve_job"]


async def resolve_job(store: JobStore, text: str) -> Job:
    """The job ``text`` names; :class:`JobNotFound` when there is none."""
    return await store.get(text.strip())
