"""Job and subscription ids as people type them: whole, or any unique prefix, as git and
docker users expect. An ambiguous prefix is a one-line error listing the candidates."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from orchestrator.domain import InvalidRequest, Job, JobNotFound
from orchestrator.stores import JobStore
from orchestrator.webhooks.models import Subscription
from orchestrator.webhooks.store import WebhookStore

__all__ = ["AmbiguousId", "resolve_job", "resolve_subscription"]

#: What a job id (a UUID) or its prefix can hold; anything else names no job.
_JOB_PREFIX: Final = re.compile(r"[0-9a-f-]{1,36}")
#: Candidates named in the error before "and more".
_SHOWN: Final = 10


class AmbiguousId(InvalidRequest):
    """A prefix that more than one id starts with."""

    def __init__(self, kind: str, prefix: str, candidates: Sequence[str], *, more: bool) -> None:
        listed = ", ".join(candidates) + (", and more" if more else "")
        super().__init__(
            f"{kind} id prefix {prefix!r} is ambiguous: {listed} (type more of the id)", field=f"{kind}_id"
        )


async def resolve_job(store: JobStore, text: str) -> Job:
    """The job ``text`` names, whole or by a unique prefix; :class:`JobNotFound` when
    none does, :class:`AmbiguousId` when several do."""
    wanted = text.strip().lower()
    if not _JOB_PREFIX.fullmatch(wanted):
        raise JobNotFound(text)
    if len(wanted) == 36:
        return await store.get(wanted)
    found = await store.find_ids(wanted, limit=_SHOWN + 1)
    if not found:
        raise JobNotFound(text)
    if len(found) > 1:
        raise AmbiguousId("job", wanted, found[:_SHOWN], more=len(found) > _SHOWN)
    return await store.get(found[0])


async def resolve_subscription(hooks: WebhookStore, text: str) -> Subscription:
    """The subscription ``text`` names, whole or by a unique prefix (subscriptions are
    few: filtered here rather than by a query)."""
    wanted = text.strip()
    subscriptions = await hooks.list_subscriptions()
    exact = [s for s in subscriptions if s.id == wanted]
    found = exact or sorted((s for s in subscriptions if wanted and s.id.startswith(wanted)), key=lambda s: s.id)
    if not found:
        return await hooks.get_subscription(wanted)  # raises the store's own "not found"
    if len(found) > 1:
        raise AmbiguousId("subscription", wanted, [s.id for s in found[:_SHOWN]], more=len(found) > _SHOWN)
    return found[0]
