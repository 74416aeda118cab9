"""Reading the webhook outbox. Claiming deliveries: a subscription whose receiver has every
slot taken is left out of the claim, so its deliveries stay unleased (due for whoever has
a slot) instead of sitting out a lease in a dispatcher that cannot send them. Listing
deliveries: the latest ones, in outbox order."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext, now_ns
from orchestrator.stores.base import JobStore
from orchestrator.webhooks.models import Delivery, Subscription
from orchestrator.webhooks.store import webhook_store

pytestmark = pytest.mark.anyio


async def _enqueued(store: JobStore, project: str) -> Job:
    job = Job.new(project_id=project, source="/srv/x", modules=("a",), options=JobOptions(), trace=TraceContext.new())
    at = now_ns()
    return await store.insert(
        dataclasses.replace(job, status=JobStatus.QUEUED, status_ns=at, queued_ns=at, reason="enqueued")
    )


async def test_busy_subscriptions_are_left_out_of_a_claim(store: JobStore) -> None:
    hooks = webhook_store(store)
    for sub in ("slow", "fast"):
        await hooks.add_subscription(
            Subscription(sub, "p", f"https://{sub}.example.com/h", "s" * 20, ("job.lifecycle.enqueue",), now_ns())
        )
    jobs = [await _enqueued(store, "p") for _ in range(3)]

    claimed = await hooks.claim_deliveries(owner="d1", now_ns=now_ns(), lease_ns=10**9, limit=10, busy=["slow"])
    assert sorted((d.subscription_id, d.job_id) for d in claimed) == sorted(("fast", j.id) for j in jobs)
    later = await hooks.claim_deliveries(owner="d2", now_ns=now_ns(), lease_ns=10**9, limit=10)
    assert sorted((d.subscription_id, d.job_id) for d in later) == sorted(("slow", j.id) for j in jobs)
    assert await hooks.claim_deliveries(owner="d3", now_ns=now_ns(), lease_ns=10**9, limit=10, busy=["\x00"]) == []


async def test_listings_give_the_latest_deliveries_in_outbox_order(store: JobStore) -> None:
    """A busy subscription's listing shows its latest deliveries (the oldest ones used to
    fill every page), in outbox order, by job, by subscription or both."""
    hooks = webhook_store(store)
    for sub in ("a", "b"):
        await hooks.add_subscription(
            Subscription(sub, "p", f"https://{sub}.example.com/h", "s" * 20, ("job.lifecycle.enqueue",), now_ns())
        )
    jobs = [await _enqueued(store, "p") for _ in range(4)]

    everything = await hooks.list_deliveries(limit=100)
    assert sorted((d.subscription_id, d.job_id) for d in everything) == sorted((s, j.id) for s in "ab" for j in jobs)
    assert [d.seq for d in everything] == sorted(d.seq for d in everything)
    assert await hooks.list_deliveries(limit=3) == everything[-3:]
    for sub in ("a", "b"):
        mine = [d for d in everything if d.subscription_id == sub]
        assert await hooks.list_deliveries(subscription_id=sub) == mine
        assert await hooks.list_deliveries(subscription_id=sub, limit=2) == mine[-2:]
    for job in jobs:
        its = [d for d in everything if d.job_id == job.id]
        assert len(its) == 2
        assert await hooks.list_deliveries(job_id=job.id) == its
        assert await hooks.list_deliveries(job_id=job.id, limit=1) == its[-1:]
        assert await hooks.list_deliveries(job_id=job.id, subscription_id="b") == [
            d for d in its if d.subscription_id == "b"
        ]
    assert await hooks.list_deliveries(subscription_id="nobody") == []
    assert await hooks.list_deliveries(job_id=jobs[0].id, subscription_id="nobody") == []

    # Paged back with `before` (a page's first seq), every delivery once, in any filter.
    for where in ({}, {"subscription_id": "a"}, {"job_id": jobs[1].id}):
        matching = [d for d in everything if all(getattr(d, k) == v for k, v in where.items())]
        pages: list[list[Delivery]] = []
        before: int | None = None
        while page := await hooks.list_deliveries(**where, limit=3, before=before):
            pages.insert(0, page)
            before = page[0].seq
        assert [d for p in pages for d in p] == matching, where
        assert all(0 < len(p) <= 3 for p in pages)
    assert await hooks.list_deliveries(before=everything[0].seq) == []
    assert await hooks.list_deliveries(before=(1 << 63) - 1) == everything
