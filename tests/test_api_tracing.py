"""Traces across the HTTP API: the caller's trace, the request span, the job's own trace,
and the webhook deliveries, all joined by parent/child relations and links.

In-memory exporters (the ``harness`` fixture) and the FastAPI instrumentation on the
harness's tracer provider, as ``orchestrator serve`` instruments the app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import api_client, dispatching, make_source, open_backend_app, running_worker, settled, wait_terminal
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from telemetry_helpers import TelemetryHarness, one_span, span_hex_ids
from webhook_receiver import receiver

from orchestrator.api.app import TRACE_HEADER, create_api
from orchestrator.bootstrap import App
from orchestrator.webhooks.dispatcher import DispatcherConfig, WebhookDispatcher
from orchestrator.webhooks.store import webhook_store

pytestmark = pytest.mark.anyio

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
PROJECT = "acme/traced"


@pytest.fixture
async def app(tmp_path: Path, harness: TelemetryHarness) -> AsyncIterator[App]:
    async with open_backend_app("sqlite", tmp_path, telemetry=harness.telemetry, webhook_allow_private=True) as opened:
        yield opened


@pytest.fixture
def api(app: App, harness: TelemetryHarness) -> Iterator[FastAPI]:
    instrumented = create_api(app)
    FastAPIInstrumentor.instrument_app(instrumented, tracer_provider=harness.tracer_provider)
    try:
        yield instrumented
    finally:
        FastAPIInstrumentor.uninstrument_app(instrumented)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path)


def server_span(spans: list[ReadableSpan], route: str) -> ReadableSpan:
    found = [s for s in spans if s.kind is SpanKind.SERVER and s.name == route]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def link_ids(span: ReadableSpan) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"), dict(link.attributes or {}))
        for link in span.links
    ]


async def test_request_span_continues_the_caller_and_links_both_ways_with_the_job(
    app: App, api: FastAPI, harness: TelemetryHarness, source: Path
) -> None:
    async with running_worker(app), api_client(api) as client:
        response = await client.post(
            "/v1/jobs",
            json={"project_id": PROJECT, "source": str(source), "modules": ["quick"]},
            headers={"traceparent": CALLER},
        )
        assert response.status_code == 201, response.text
        job = response.json()
        done = await wait_terminal(client, job["id"])
    assert done["status"] == "completed"
    assert response.headers[TRACE_HEADER] == job["trace_id"]

    spans = harness.spans()
    request_span = server_span(spans, "POST /v1/jobs")
    request_trace, request_span_id = span_hex_ids(request_span)

    # The request span is a child of the caller's span, in the caller's trace.
    assert request_trace == CALLER_TRACE
    assert request_span.parent is not None
    assert request_span.parent.is_remote
    assert format(request_span.parent.span_id, "016x") == CALLER_SPAN
    assert (request_span.attributes or {}).get("job_id") == job["id"]

    # The job is a trace of its own, not part of the caller's.
    assert job["trace_id"] != CALLER_TRACE

    # The request span links to the job's root span (persisted ids).
    assert (job["trace_id"], job["root_span_id"], {"link.kind": "job"}) in link_ids(request_span)

    # The root span, emitted at the terminal transition, links back to the request span.
    root = one_span(harness.trace(job["trace_id"]), "job")
    assert span_hex_ids(root) == (job["trace_id"], job["root_span_id"])
    assert root.parent is None
    assert link_ids(root) == [(request_trace, request_span_id, {"link.kind": "caller"})]

    # Every span of the job's trace hangs off the root; none is in the caller's trace.
    job_spans = harness.trace(job["trace_id"])
    assert {s.name for s in job_spans} >= {"job", "job.create", "job.queued", "job.execute", "job.module"}
    assert all(s.context is not None and s.context.trace_id != int(CALLER_TRACE, 16) for s in job_spans)


async def test_without_a_caller_the_request_span_is_a_root_and_still_linked(
    app: App, api: FastAPI, harness: TelemetryHarness, source: Path
) -> None:
    async with running_worker(app), api_client(api) as client:
        response = await client.post(
            "/v1/jobs", json={"project_id": PROJECT, "source": str(source), "modules": ["quick"]}
        )
        job = response.json()
        await wait_terminal(client, job["id"])

    request_span = server_span(harness.spans(), "POST /v1/jobs")
    assert request_span.parent is None
    request_trace, request_span_id = span_hex_ids(request_span)
    assert request_trace != job["trace_id"]
    assert (job["trace_id"], job["root_span_id"], {"link.kind": "job"}) in link_ids(request_span)
    root = one_span(harness.trace(job["trace_id"]), "job")
    assert link_ids(root) == [(request_trace, request_span_id, {"link.kind": "caller"})]


async def test_a_malformed_traceparent_starts_a_fresh_request_trace(
    app: App, api: FastAPI, harness: TelemetryHarness, source: Path
) -> None:
    async with api_client(api) as client:
        response = await client.post(
            "/v1/jobs",
            json={"project_id": PROJECT, "source": str(source), "modules": ["quick"]},
            headers={"traceparent": "00-not-a-trace-01"},
        )
    assert response.status_code == 201
    request_span = server_span(harness.spans(), "POST /v1/jobs")
    assert request_span.parent is None
    assert (response.json()["trace_id"], response.json()["root_span_id"], {"link.kind": "job"}) in link_ids(
        request_span
    )


async def test_webhook_deliveries_are_spans_of_the_jobs_trace(
    app: App, api: FastAPI, harness: TelemetryHarness, source: Path
) -> None:
    events = ["job.lifecycle.enqueue", "job.lifecycle.start", "job.lifecycle.complete"]
    with receiver([500]) as rx:  # the first attempt fails: two spans for the enqueue delivery
        async with api_client(api) as client:
            hook = await client.post(
                "/v1/webhooks", json={"project_id": PROJECT, "url": rx.url, "secret": "s" * 32, "events": events}
            )
            assert hook.status_code == 201
            dispatcher = WebhookDispatcher(
                webhook_store(app.store),
                app.telemetry,
                DispatcherConfig(allow_private=True, backoff_base_seconds=0.01, max_attempts=3, poll_seconds=0.02),
            )
            async with dispatching(dispatcher), running_worker(app):
                created = await client.post(
                    "/v1/jobs",
                    json={"project_id": PROJECT, "source": str(source), "modules": ["quick"]},
                    headers={"traceparent": CALLER},
                )
                job = created.json()
                await wait_terminal(client, job["id"])
                await settled(webhook_store(app.store), job["id"], 3)
        received = rx.requests

    job_trace = int(job["trace_id"], 16)
    root_span_id = int(job["root_span_id"], 16)
    deliveries = [s for s in harness.spans() if s.name == "webhook.deliver"]
    assert len(deliveries) == 4  # enqueue twice (500, then 200), start, complete
    for span in deliveries:
        attributes = span.attributes or {}
        assert span.kind is SpanKind.CLIENT
        assert span.context is not None
        assert span.context.trace_id == job_trace
        assert span.parent is not None
        assert span.parent.span_id == root_span_id
        assert attributes["job_id"] == job["id"]
        assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [(job_trace, root_span_id)]
        assert dict(span.links[0].attributes or {}) == {"event": attributes["event"]}
    assert sorted(str((s.attributes or {})["event"]) for s in deliveries) == sorted([events[0], *events])
    assert sorted(str((s.attributes or {}).get("outcome")) for s in deliveries) == [
        "delivered",
        "delivered",
        "delivered",
        "retry",
    ]

    # The receiver can continue the trace: each request's traceparent is its delivery span.
    by_span_id = {format(s.context.span_id, "016x"): s for s in deliveries if s.context is not None}
    for request in received:
        match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", request.headers["traceparent"])
        assert match is not None
        assert match.group(1) == job["trace_id"]
        span = by_span_id[match.group(2)]
        assert (span.attributes or {})["event"] == request.event

    # And the job's trace is not the caller's, though the root links to the request.
    assert job["trace_id"] != CALLER_TRACE
