"""Webhooks end to end: subscriptions made through the API, outbox rows written by the
job's transitions, a real dispatcher POSTing to a real local HTTP receiver.

The receiver (tests/webhook_receiver.py) answers a scripted sequence of statuses, so
each test chooses what the subscriber does: succeed, fail, throttle, or hang."""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from api_helpers import (
    api_client,
    dispatching,
    make_source,
    open_backend_app,
    poll,
    running_worker,
    settled,
    wait_terminal,
)
from telemetry_helpers import TelemetryHarness
from webhook_receiver import HANG, Receiver, Reply, receiver

from orchestrator.api.app import create_api
from orchestrator.bootstrap import App
from orchestrator.webhooks.dispatcher import DispatcherConfig, WebhookDispatcher
from orchestrator.webhooks.models import Subscription, verify
from orchestrator.webhooks.store import webhook_store

pytestmark = pytest.mark.anyio

SECRET = "whsec-Zq8v-very-secret-signing-key"
PROJECT = "acme/webhooks"
ENQUEUE, START, COMPLETE, FAIL = (
    "job.lifecycle.enqueue",
    "job.lifecycle.start",
    "job.lifecycle.complete",
    "job.lifecycle.fail",
)
LIFECYCLE = [ENQUEUE, START, COMPLETE]
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")


# -- plumbing --------------------------------------------------------------------------


@pytest.fixture
def rx() -> Iterator[Receiver]:
    """A receiver answering 200 to everything (tests needing a script open their own)."""
    with receiver() as server:
        yield server


@pytest.fixture
async def app(tmp_path: Path, harness: TelemetryHarness) -> AsyncIterator[App]:
    # Subscriptions to the loopback receiver are allowed here; tests of the refusal open their own.
    async with open_backend_app("sqlite", tmp_path, telemetry=harness.telemetry, webhook_allow_private=True) as opened:
        yield opened


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path)


def dispatcher(app: App, **config: Any) -> WebhookDispatcher:
    """A dispatcher fast enough for tests: loopback allowed, tiny backoff, 3 attempts."""
    values: dict[str, Any] = {
        "allow_private": True,
        "backoff_base_seconds": 0.01,
        "max_attempts": 3,
        "poll_seconds": 0.02,
        "attempt_deadline": 5.0,
        **config,
    }
    return WebhookDispatcher(webhook_store(app.store), app.telemetry, DispatcherConfig(**values))


async def subscribe(
    client: httpx.AsyncClient, url: str, events: Sequence[str] | None = None, secret: str = SECRET
) -> dict[str, Any]:
    body: dict[str, Any] = {"project_id": PROJECT, "url": url, "secret": secret}
    if events is not None:
        body["events"] = list(events)
    response = await client.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def create_job(client: httpx.AsyncClient, source: Path) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json={"project_id": PROJECT, "source": str(source), "modules": ["quick"]})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def completed_job(app: App, client: httpx.AsyncClient, source: Path) -> dict[str, Any]:
    """A job run to completion by an in-process worker (its outbox rows all written)."""
    async with running_worker(app):
        job = await create_job(client, source)
        done = await wait_terminal(client, job["id"])
    assert done["status"] == "completed"
    return done


def body_of(request: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(request.body)
    return parsed


# -- the lifecycle, signed and traced --------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_job_lifecycle_is_delivered_in_order_signed_and_traced(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, source: Path, rx: Receiver
) -> None:
    pg: dict[str, Any] = {}
    if backend == "postgres":
        pg = {
            "postgres_url": request.getfixturevalue("postgres_url"),
            "pg_schema": request.getfixturevalue("pg_schema"),
        }
    async with (
        open_backend_app(backend, tmp_path, webhook_allow_private=True, **pg) as app,
        api_client(create_api(app)) as client,
    ):
        hook = await subscribe(client, rx.url, LIFECYCLE)
        async with dispatching(dispatcher(app)), running_worker(app):
            job = await create_job(client, source)
            await wait_terminal(client, job["id"])
            stored = await settled(webhook_store(app.store), job["id"], 3)
        api_view = await client.get(f"/v1/jobs/{job['id']}/deliveries")
        # The subscription's history, the latest first, paged back by seq.
        latest = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 2})).json()
        earlier_url = f"/v1/webhooks/{hook['id']}/deliveries"
        earlier = (await client.get(earlier_url, params={"before": latest[0]["seq"]})).json()

    received = rx.requests
    assert [r.event for r in received] == LIFECYCLE
    assert [d.event for d in stored] == LIFECYCLE
    assert all(d.status == "delivered" and d.attempts == 1 and d.last_status_code == 200 for d in stored)
    assert [r.delivery_id for r in received] == [d.id for d in stored]
    assert len({r.delivery_id for r in received}) == 3  # unique per delivery

    transitions = [("queued", "pending", "enqueued"), ("running", "queued", "claimed"), ("completed", "running", None)]
    now = int(time.time())
    for request_, (status_to, status_from, reason) in zip(received, transitions, strict=True):
        assert request_.method == "POST"
        assert request_.path == "/hooks"
        assert request_.headers["content-type"] == "application/json"
        body = body_of(request_)
        assert set(body) == {
            "event",
            "job_id",
            "project_id",
            "status_from",
            "status_to",
            "reason",
            "timestamp",
            "trace_id",
            "attempt",
        }
        assert body["event"] == request_.event
        assert body["job_id"] == job["id"]
        assert body["project_id"] == PROJECT
        assert (body["status_from"], body["status_to"]) == (status_from, status_to)
        if reason is not None:
            assert body["reason"] == reason
        assert body["trace_id"] == job["trace_id"]
        assert body["attempt"] == 1
        assert abs(datetime.fromisoformat(body["timestamp"]).timestamp() - now) < 60

        signature = request_.headers["x-orchestrator-signature"]
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", signature)
        assert verify(SECRET, signature, request_.body, now=now)
        assert not verify("another-secret-value", signature, request_.body, now=now)
        assert not verify(SECRET, signature, request_.body.replace(b"acme", b"evil"), now=now)
        assert not verify(SECRET, signature, request_.body, now=now + 3600)  # stale

        traceparent = TRACEPARENT.fullmatch(request_.headers["traceparent"])
        assert traceparent is not None, request_.headers["traceparent"]
        assert traceparent.group(1) == job["trace_id"]
        assert int(traceparent.group(2), 16) != 0

    assert api_view.status_code == 200
    listed = api_view.json()
    assert [d["event"] for d in listed] == LIFECYCLE
    assert all(d["status"] == "delivered" and d["subscription_id"] == hook["id"] for d in listed)
    assert all([a["outcome"] for a in d["history"]] == ["delivered"] for d in listed)
    assert SECRET not in api_view.text
    assert [d["id"] for d in earlier + latest] == [d["id"] for d in listed] == [d.id for d in stored]
    assert [d["seq"] for d in earlier + latest] == sorted(d.seq for d in stored)
    assert len(latest) == 2


# -- retries, dead letters, throttling -------------------------------------------------


async def test_a_5xx_is_retried_then_delivered_once(app: App, source: Path) -> None:
    with receiver([500, 200]) as rx:
        async with api_client(create_api(app)) as client:
            hook = await subscribe(client, rx.url, [ENQUEUE])
            job = await create_job(client, source)  # the enqueue transition writes the outbox row
            async with dispatching(dispatcher(app)):
                [delivery] = await settled(webhook_store(app.store), job["id"], 1)
            history = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries")).json()

    assert delivery.status == "delivered"
    assert delivery.attempts == 2
    assert delivery.last_status_code == 200
    assert delivery.last_error is None
    assert delivery.finished_ns is not None
    attempts = await webhook_store(app.store).attempts(delivery.id)
    assert [(a.attempt, a.outcome, a.status_code, a.error) for a in attempts] == [
        (1, "retry", 500, "HTTP 500"),
        (2, "delivered", 200, None),
    ]
    assert attempts[0].at_ns < attempts[1].at_ns
    received = rx.requests
    assert [r.status for r in received] == [500, 200]
    assert {r.delivery_id for r in received} == {delivery.id}  # the same delivery, retried
    assert received[0].body == received[1].body
    assert all(verify(SECRET, r.headers["x-orchestrator-signature"], r.body, now=int(time.time())) for r in received)

    [shown] = history
    assert shown["status"] == "delivered"
    assert shown["attempts"] == 2
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in shown["history"]] == [
        (1, "retry", 500),
        (2, "delivered", 200),
    ]


async def test_a_delivery_failing_every_time_is_dead_after_max_attempts(app: App, source: Path) -> None:
    with receiver(default=500) as rx:
        async with api_client(create_api(app)) as client:
            await subscribe(client, rx.url, [ENQUEUE])
            job = await create_job(client, source)
            async with dispatching(dispatcher(app, max_attempts=3)):
                [delivery] = await settled(webhook_store(app.store), job["id"], 1)
                await anyio.sleep(0.2)  # the dispatcher keeps running: nothing more is sent

    assert delivery.status == "dead"
    assert delivery.attempts == 3
    assert delivery.last_status_code == 500
    assert delivery.last_error == "HTTP 500"
    assert delivery.finished_ns is not None
    attempts = await webhook_store(app.store).attempts(delivery.id)
    assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "dead", 500),
    ]
    assert len(rx.requests) == 3
    assert {r.delivery_id for r in rx.requests} == {delivery.id}


async def test_a_4xx_is_dead_at_once(app: App, source: Path) -> None:
    with receiver(default=404) as rx:
        async with api_client(create_api(app)) as client:
            await subscribe(client, rx.url, [ENQUEUE])
            job = await create_job(client, source)
            async with dispatching(dispatcher(app)):
                [delivery] = await settled(webhook_store(app.store), job["id"], 1)
                await anyio.sleep(0.2)

    assert delivery.status == "dead"
    assert delivery.attempts == 1
    assert delivery.last_status_code == 404
    assert delivery.last_error is not None
    assert "not retried" in delivery.last_error
    attempts = await webhook_store(app.store).attempts(delivery.id)
    assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [(1, "dead", 404)]
    assert len(rx.requests) == 1


@pytest.mark.parametrize(("form", "at_least"), [("seconds", 2.0), ("http-date", 20.0)])
async def test_429_honours_retry_after(app: App, source: Path, form: str, at_least: float) -> None:
    # Retry-After as delta-seconds ("2"), or as an HTTP date 29-30 s ahead of this line (1 s
    # resolution): at least 20 s ahead of the attempt however slowly the setup runs.
    retry_after = "2" if form == "seconds" else email.utils.formatdate(time.time() + 30, usegmt=True)
    with receiver([Reply(429, {"Retry-After": retry_after})]) as rx:
        async with api_client(create_api(app)) as client:
            await subscribe(client, rx.url, [ENQUEUE])
            job = await create_job(client, source)
        instance = dispatcher(app)  # backoff alone would wait ~10 ms
        async with httpx.AsyncClient() as http:
            assert await instance.dispatch_once(http) == 1
            assert await instance.dispatch_once(http) == 0  # not due yet: Retry-After holds it back
        hooks = webhook_store(app.store)
        [delivery] = await hooks.list_deliveries(job_id=job["id"])
        [attempt] = await hooks.attempts(delivery.id)

    assert delivery.status == "pending"
    assert delivery.attempts == 1
    assert delivery.last_status_code == 429
    assert (attempt.outcome, attempt.status_code) == ("retry", 429)
    assert (delivery.next_attempt_ns - attempt.at_ns) / 1e9 >= at_least
    assert len(rx.requests) == 1


# -- filtering and ordering ------------------------------------------------------------


async def test_only_subscribed_events_are_delivered(app: App, source: Path, rx: Receiver) -> None:
    async with api_client(create_api(app)) as client:
        await subscribe(client, rx.url + "?only=fail", [FAIL])
        wanted = await subscribe(client, rx.url + "?only=complete", [COMPLETE])
        job = await completed_job(app, client, source)
        hooks = webhook_store(app.store)
        async with dispatching(dispatcher(app)):
            [delivery] = await settled(hooks, job["id"], 1)
            await anyio.sleep(0.2)

    assert delivery.subscription_id == wanted["id"]
    assert delivery.event == COMPLETE
    assert [(r.path, r.event) for r in rx.requests] == [("/hooks?only=complete", COMPLETE)]


async def test_a_jobs_deliveries_keep_their_order_when_the_first_is_retried(app: App, source: Path) -> None:
    with receiver([500, 503, 200]) as rx:
        async with api_client(create_api(app)) as client:
            await subscribe(client, rx.url, LIFECYCLE)
            job = await completed_job(app, client, source)  # all three outbox rows exist first
            async with dispatching(dispatcher(app, max_attempts=3)):
                stored = await settled(webhook_store(app.store), job["id"], 3)

    assert [(d.event, d.status, d.attempts) for d in stored] == [
        (ENQUEUE, "delivered", 3),
        (START, "delivered", 1),
        (COMPLETE, "delivered", 1),
    ]
    received = rx.requests
    assert [(r.event, r.status) for r in received] == [
        (ENQUEUE, 500),
        (ENQUEUE, 503),
        (ENQUEUE, 200),
        (START, 200),
        (COMPLETE, 200),
    ]
    assert received[2].at <= received[3].at <= received[4].at


# -- a dispatcher killed mid-retry -----------------------------------------------------


async def test_a_killed_dispatcher_is_taken_over_after_its_lease_expires(app: App, source: Path) -> None:
    # enqueue: 500, then a hang (the first dispatcher dies holding the lease), then 200s.
    with receiver([500, HANG]) as rx:
        async with api_client(create_api(app)) as client:
            await subscribe(client, rx.url, LIFECYCLE)
            job = await completed_job(app, client, source)
            hooks = webhook_store(app.store)
            first = dispatcher(app, lease_seconds=0.5)
            async with dispatching(first) as scope:
                await poll(lambda: _count(rx, 2), what="the retry to reach the receiver")
                scope.cancel()  # killed mid-retry, its lease still held
            killed_at = time.monotonic()
            [pending, *_] = await hooks.list_deliveries(job_id=job["id"])
            assert (pending.event, pending.status, pending.attempts) == (ENQUEUE, "pending", 1)

            second = dispatcher(app)
            assert second.owner != first.owner
            async with dispatching(second):
                stored = await settled(hooks, job["id"], 3)

    assert [(d.event, d.status) for d in stored] == [
        (ENQUEUE, "delivered"),
        (START, "delivered"),
        (COMPLETE, "delivered"),
    ]
    received = rx.requests
    assert [(r.event, r.status) for r in received] == [
        (ENQUEUE, 500),
        (ENQUEUE, None),  # the killed attempt: the receiver saw it, nobody recorded its outcome
        (ENQUEUE, 200),
        (START, 200),
        (COMPLETE, 200),
    ]
    # The second dispatcher waited for the dead one's lease (0.5 s from its claim).
    assert received[2].at - received[1].at >= 0.4
    assert received[2].at >= killed_at
    # Nothing lost; duplicates only of the attempt that was in flight (at least once).
    delivered = {r.delivery_id for r in received if r.status == 200}
    assert delivered == {d.id for d in stored}
    assert [r.delivery_id for r in received].count(stored[0].id) == 3
    attempts = await hooks.attempts(stored[0].id)
    assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [(1, "retry", 500), (2, "delivered", 200)]


async def _count(rx: Receiver, n: int) -> bool:
    return len(rx.requests) >= n


# -- refused addresses -----------------------------------------------------------------


async def test_non_public_targets_are_refused_at_subscription_and_at_delivery(
    tmp_path: Path, source: Path, rx: Receiver
) -> None:
    localhost = rx.url.replace("127.0.0.1", "localhost")
    port = rx.url.split(":")[2].split("/")[0]
    async with open_backend_app("sqlite", tmp_path) as strict, api_client(create_api(strict)) as client:
        # At subscription time: 422 naming the field, nothing stored.
        for url, why in [
            (rx.url, "127.0.0.1 is not a public address (loopback)"),
            (localhost, "localhost resolves to a non-public address: 127.0.0.1 is not a public address (loopback)"),
        ]:
            response = await client.post("/v1/webhooks", json={"project_id": PROJECT, "url": url, "secret": SECRET})
            assert response.status_code == 422, response.text
            assert response.json() == {
                "error": {"status": 422, "code": "validation_error", "message": f"url: refused: {why}", "field": "url"}
            }
        assert (await client.get("/v1/webhooks")).json() == []

        # At delivery time, the same rule: subscriptions stored before the check existed.
        hooks = webhook_store(strict.store)
        for sid, url in [
            ("old-ip", rx.url),
            ("old-name", localhost),
            ("old-mapped", f"http://[::ffff:127.0.0.1]:{port}/"),
        ]:
            await hooks.add_subscription(Subscription(sid, PROJECT, url, SECRET, (ENQUEUE,), time.time_ns()))
        job = await create_job(client, source)
        async with dispatching(dispatcher(strict, allow_private=False)):
            stored = await settled(hooks, job["id"], 3)
        outcomes = [[a.outcome for a in await hooks.attempts(d.id)] for d in stored]

    assert rx.requests == []  # nothing reached the receiver
    assert outcomes == [["refused"]] * 3
    errors = {}
    for delivery in stored:
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("dead", 1, None)
        errors[delivery.subscription_id] = delivery.last_error
    assert errors == {
        "old-ip": "refused: 127.0.0.1 is not a public address (loopback)",
        "old-name": "refused: localhost resolves to a non-public address: 127.0.0.1 is not a public address (loopback)",
        "old-mapped": "refused: ::ffff:127.0.0.1 is an IPv4-mapped IPv6 address (of 127.0.0.1)",
    }


class RebindingResolver:
    """A hostile DNS server: its first answer is public, every later one is loopback."""

    def __init__(self, first: str = "93.184.216.34", then: str = "127.0.0.1") -> None:
        self.answers = [first]
        self.then = then
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [self.answers.pop(0) if self.answers else self.then]


async def test_a_rebinding_resolver_cannot_reach_loopback(app: App, source: Path, rx: Receiver) -> None:
    hooks = webhook_store(app.store)
    port = rx.url.split(":")[2].split("/")[0]
    url = f"http://hooks.rebind.test:{port}/hooks"
    await hooks.add_subscription(Subscription("rebind", PROJECT, url, SECRET, (ENQUEUE,), time.time_ns()))
    async with api_client(create_api(app)) as client:
        job = await create_job(client, source)
    resolver = RebindingResolver()
    instance = WebhookDispatcher(
        hooks,
        app.telemetry,
        DispatcherConfig(allow_private=False, max_attempts=1, attempt_deadline=1.0, connect_timeout=0.5),
        resolver=resolver,
    )
    async with instance.http_client() as http:
        assert await instance.dispatch_once(http) == 1
    [delivery] = await hooks.list_deliveries(job_id=job["id"])

    # Checked once, connected to what was checked (the public address, unreachable here):
    # the loopback answer a second lookup would have given was never asked for.
    assert resolver.calls == ["hooks.rebind.test"]
    assert rx.requests == []
    assert delivery.status == "dead"
    assert delivery.last_error is not None
    assert "127.0.0.1" not in delivery.last_error


async def test_the_connection_goes_to_the_resolved_address_with_the_name_as_host(
    app: App, source: Path, rx: Receiver
) -> None:
    hooks = webhook_store(app.store)
    port = rx.url.split(":")[2].split("/")[0]
    name = f"hooks.pinned.test:{port}"
    await hooks.add_subscription(Subscription("pinned", PROJECT, f"http://{name}/hooks", SECRET, (ENQUEUE,), 1))
    async with api_client(create_api(app)) as client:
        job = await create_job(client, source)
    resolver = RebindingResolver(first="127.0.0.1", then="192.0.2.1")
    instance = WebhookDispatcher(hooks, app.telemetry, DispatcherConfig(allow_private=True), resolver=resolver)
    async with instance.http_client() as http:
        assert await instance.dispatch_once(http) == 1

    [received] = rx.requests
    assert received.headers["host"] == name  # the name, though the connection went to 127.0.0.1
    assert resolver.calls == ["hooks.pinned.test"]
    [delivery] = await hooks.list_deliveries(job_id=job["id"])
    assert delivery.status == "delivered"


async def test_a_name_that_does_not_resolve_is_retried(app: App, source: Path) -> None:
    hooks = webhook_store(app.store)
    # .invalid never resolves (RFC 6761): a DNS failure, which may be temporary.
    await hooks.add_subscription(
        Subscription("no-dns", PROJECT, "https://hooks.example.invalid/x", SECRET, (ENQUEUE,), time.time_ns())
    )
    async with api_client(create_api(app)) as client:
        job = await create_job(client, source)
    async with dispatching(dispatcher(app, allow_private=False, max_attempts=2)):
        [delivery] = await settled(hooks, job["id"], 1)

    attempts = await hooks.attempts(delivery.id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "retry"), (2, "dead")]
    assert all(a.error is not None and a.error.startswith("cannot resolve hooks.example.invalid") for a in attempts)
    assert delivery.status == "dead"


async def test_a_stored_url_that_cannot_be_sent_is_dead_and_does_not_stop_the_dispatcher(
    app: App, source: Path, rx: Receiver
) -> None:
    hooks = webhook_store(app.store)
    # Written straight to the store, as a subscription made before the URL check tightened.
    await hooks.add_subscription(
        Subscription("bad-port", PROJECT, "http://example.invalid:99999/x", SECRET, (ENQUEUE,), time.time_ns())
    )
    async with api_client(create_api(app)) as client:
        await subscribe(client, rx.url, [ENQUEUE])
        job = await create_job(client, source)
    async with dispatching(dispatcher(app)):
        stored = await settled(hooks, job["id"], 2)

    by_subscription = {d.subscription_id: d for d in stored}
    bad = by_subscription.pop("bad-port")
    assert bad.status == "dead"
    assert bad.last_error is not None
    assert "invalid URL" in bad.last_error
    [good] = by_subscription.values()
    assert good.status == "delivered"
    assert len(rx.requests) == 1


# -- secrets ---------------------------------------------------------------------------


async def test_the_secret_never_leaves_the_store(
    app: App, source: Path, harness: TelemetryHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("orchestrator", "otel"):
        caplog.set_level(logging.DEBUG, logger=name)
    with receiver([500]) as rx:  # one retry: warning records too
        async with api_client(create_api(app)) as client:
            created = await client.post(
                "/v1/webhooks", json={"project_id": PROJECT, "url": rx.url, "secret": SECRET, "events": LIFECYCLE}
            )
            assert created.status_code == 201
            hook = created.json()
            assert "secret" not in hook
            job = await completed_job(app, client, source)
            async with dispatching(dispatcher(app)):
                await settled(webhook_store(app.store), job["id"], 3)
            responses = [
                created,
                await client.get("/v1/webhooks"),
                await client.get("/v1/webhooks", params={"project_id": PROJECT}),
                await client.get(f"/v1/webhooks/{hook['id']}"),
                await client.get(f"/v1/webhooks/{hook['id']}/deliveries"),
                await client.get(f"/v1/jobs/{job['id']}/deliveries"),
                await client.get(f"/v1/jobs/{job['id']}"),
            ]
            invalid = await client.post("/v1/webhooks", json={"project_id": "bad id!", "url": rx.url, "secret": SECRET})

    assert len(rx.requests) == 4
    for response in [*responses, invalid]:
        assert response.status_code < 500
        assert SECRET not in response.text, response.request.url
    assert all(r.status_code == 200 for r in responses[1:])

    webhook_records = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert len(webhook_records) >= 4, [r.getMessage() for r in caplog.records]
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(vars(record))

    spans = harness.spans()
    assert any(s.name == "webhook.deliver" for s in spans)
    for span in spans:
        assert SECRET not in span.to_json()
