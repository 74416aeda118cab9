"""Claiming webhook deliveries: a subscription whose receiver has every slot taken is left
out of the claim, so its deliveries stay unleased (due for whoever has a slot) instead of
sitting out a lease in a dispatcher that cannot send them."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.domain import Job, JobOptions, JobStatus, TraceContext, now_ns
from orchestrator.stores.base import JobStore
from orchestrator.webhooks.models import Subscription
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
