"""The HTTP API end to end: httpx on the ASGI app, a real store (SQLite file and
PostgreSQL in a fresh schema), and a real in-process worker so jobs complete.

Every client error has its status and the shared error body, and is never a 500."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import api_client, make_source, open_backend_app, poll, running_worker, wait_terminal

import orchestrator
from orchestrator.api.app import TRACE_HEADER, create_api
from orchestrator.bootstrap import App
from orchestrator.modules.registry import ModuleRegistry

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """An opened App on each backend (no worker: tests start one when they need it)."""
    pg: dict[str, Any] = {}
    if request.param == "postgres":
        pg = {
            "postgres_url": request.getfixturevalue("postgres_url"),
            "pg_schema": request.getfixturevalue("pg_schema"),
        }
    async with open_backend_app(request.param, tmp_path, **pg) as opened:
        yield opened


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path)


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> None:
    """``response`` is the shared error body with ``status`` (and ``code``/``field``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"status", "code", "message", "field"}
    assert error["status"] == status
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if field is not None:
        assert error["field"] == field, error


async def create(client: httpx.AsyncClient, source: Path, **body: Any) -> dict[str, Any]:
    payload = {"project_id": "acme/api", "source": str(source), "modules": ["quick"], **body}
    response = await client.post("/v1/jobs", json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- the happy path --------------------------------------------------------------------


async def test_created_job_runs_to_completion(app: App, source: Path) -> None:
    api = create_api(app)
    async with running_worker(app), api_client(api) as client:
        response = await client.post(
            "/v1/jobs", json={"project_id": "acme/api", "source": str(source), "modules": ["quick", "other"]}
        )
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["id"]
        assert len(job["trace_id"]) == 32
        assert int(job["trace_id"], 16) != 0
        assert len(job["root_span_id"]) == 16
        assert response.headers[TRACE_HEADER] == job["trace_id"]
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("queued", "running", "completed")
        assert job["modules"] == ["quick", "other"]
        assert job["project_id"] == "acme/api"

        done = await wait_terminal(client, job["id"])
        assert done["status"] == "completed", done
        assert done["trace_id"] == job["trace_id"]
        assert done["finished_at"] is not None
        assert {r["module"]: r["outcome"] for r in done["results"]} == {"quick": "ok", "other": "ok"}

        got = await client.get(f"/v1/jobs/{job['id']}")
        assert got.headers[TRACE_HEADER] == job["trace_id"]


async def test_events_are_the_lifecycle_in_order(app: App, source: Path) -> None:
    api = create_api(app)
    async with running_worker(app, worker_id="api-test-worker"), api_client(api) as client:
        job = await create(client, source)
        await wait_terminal(client, job["id"])
        response = await client.get(f"/v1/jobs/{job['id']}/events")

    assert response.status_code == 200
    assert response.headers[TRACE_HEADER] == job["trace_id"]
    events = response.json()
    assert [(e["status_from"], e["status_to"]) for e in events] == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "completed"),
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["reason"] for e in events][:3] == ["created", "enqueued", "claimed"]
    assert events[2]["worker_id"] == "api-test-worker"
    assert all(e["attempt"] == 1 for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


async def test_list_filters_and_paginates_with_next_cursor(app: App, source: Path) -> None:
    api = create_api(app)  # no worker: jobs stay queued unless cancelled
    async with api_client(api) as client:
        mine = [(await create(client, source, project_id="proj-a"))["id"] for _ in range(5)]
        theirs = [(await create(client, source, project_id="proj-b"))["id"] for _ in range(2)]
        cancelled = await client.post(f"/v1/jobs/{mine[1]}/cancel")
        assert cancelled.status_code == 200

        seen: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"project_id": "proj-a", "limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            response = await client.get("/v1/jobs", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            pages += 1
            assert len(page["items"]) <= 2
            assert all(item["project_id"] == "proj-a" for item in page["items"])
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 10, "pagination does not end"

        assert pages == 3
        assert len(seen) == len(set(seen)) == 5  # no duplicates
        assert set(seen) == set(mine)  # no gaps
        assert seen == sorted(seen, reverse=True)  # newest (largest uuid7) first

        everything = (await client.get("/v1/jobs", params={"limit": 200})).json()
        assert {j["id"] for j in everything["items"]} == set(mine) | set(theirs)
        assert everything["next_cursor"] is None

        by_status = (await client.get("/v1/jobs", params={"status": "cancelled"})).json()
        assert [j["id"] for j in by_status["items"]] == [mine[1]]
        both = (await client.get("/v1/jobs", params={"status": "queued", "project_id": "proj-b"})).json()
        assert {j["id"] for j in both["items"]} == set(theirs)
        assert all(j["status"] == "queued" for j in both["items"])
        nothing = (await client.get("/v1/jobs", params={"project_id": "nobody"})).json()
        assert nothing == {"items": [], "next_cursor": None}

        assert_error(await client.get("/v1/jobs", params={"status": "bogus"}), 422, "validation_error", "status")
        assert_error(await client.get("/v1/jobs", params={"limit": 0}), 422, "validation_error", "limit")
        assert_error(await client.get("/v1/jobs", params={"limit": 201}), 422, "validation_error", "limit")

        # By error category, and created since a moment (a job's own created_at keeps it).
        cancelled = (await client.get("/v1/jobs", params={"error_category": "cancelled"})).json()
        assert [j["id"] for j in cancelled["items"]] == [mine[1]]
        assert (await client.get("/v1/jobs", params={"error_category": "module"})).json()["items"] == []
        by_age = sorted(everything["items"], key=lambda j: j["created_at"])
        for at in (0, 4, len(by_age) - 1):
            since = (await client.get("/v1/jobs", params={"since": by_age[at]["created_at"], "limit": 200})).json()
            assert [j["id"] for j in since["items"]] == [j["id"] for j in reversed(by_age[at:])]
        later = {"since": "2999-01-01T00:00:00+02:00"}
        assert (await client.get("/v1/jobs", params=later)).json() == {"items": [], "next_cursor": None}
        bad = [("error_category", "bogus"), ("since", "yesterday"), ("since", "2026-13-01T00:00:00Z")]
        for field, value in bad:
            assert_error(await client.get("/v1/jobs", params={field: value}), 422, "validation_error", field)


# -- cancellation ------------------------------------------------------------------------


async def test_cancel_a_queued_job_then_again(app: App, source: Path) -> None:
    api = create_api(app)  # no worker: the job stays queued
    async with api_client(api) as client:
        job = await create(client, source)
        response = await client.post(f"/v1/jobs/{job['id']}/cancel", params={"reason": "not needed"})
        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["reason"] == "not needed"
        assert cancelled["error_category"] == "cancelled"
        assert response.headers[TRACE_HEADER] == job["trace_id"]

        again = await client.post(f"/v1/jobs/{job['id']}/cancel")
        assert_error(again, 409, "illegal_transition")
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
        events = (await client.get(f"/v1/jobs/{job['id']}/events")).json()
        assert [e["status_to"] for e in events] == ["pending", "queued", "cancelled"]


async def test_cancel_a_finished_job_is_a_conflict(app: App, source: Path) -> None:
    api = create_api(app)
    async with running_worker(app), api_client(api) as client:
        job = await create(client, source)
        assert (await wait_terminal(client, job["id"]))["status"] == "completed"
        response = await client.post(f"/v1/jobs/{job['id']}/cancel")
        assert_error(response, 409, "illegal_transition")
        assert "completed" in response.json()["error"]["message"]
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "completed"


async def test_cancel_a_running_job_is_accepted_then_done(app: App, source: Path) -> None:
    api = create_api(app)
    async with running_worker(app), api_client(api) as client:
        job = await create(client, source, modules=["hang"])

        async def running() -> bool:
            return (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "running"

        await poll(running, what="the job to run")
        response = await client.post(f"/v1/jobs/{job['id']}/cancel", params={"reason": "stop it"})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "running"
        assert response.json()["cancel_requested"] == "stop it"
        done = await wait_terminal(client, job["id"])
        assert done["status"] == "cancelled"


# -- client errors ---------------------------------------------------------------------

INVALID_BODIES = [
    pytest.param({"project_id": "bad id!"}, "project_id", id="bad-project-id"),
    pytest.param({"project_id": ""}, "project_id", id="empty-project-id"),
    pytest.param({"modules": ["nope"]}, "modules", id="unknown-module"),
    pytest.param({"modules": ["quick", "quick"]}, "modules", id="duplicate-module"),
    pytest.param({"source": None}, "source", id="missing-source"),
    pytest.param({"source": "/definitely/not/here"}, "source", id="nonexistent-source"),
    pytest.param({"unexpected": 1}, "unexpected", id="extra-field"),
    pytest.param({"options": {"concurrency": 0}}, "options.concurrency", id="bad-concurrency"),
    pytest.param({"options": {"failure_policy": "sometimes"}}, "options.failure_policy", id="bad-policy"),
    pytest.param({"options": {"module_options": {"other": {}}}}, "options.module_options", id="foreign-options"),
    pytest.param({"options": {"ignore": ["**/[z-a]"]}}, "options.ignore", id="reversed-range-pattern"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_BODIES)
async def test_invalid_create_requests_name_the_field(
    app: App, source: Path, change: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"project_id": "acme/api", "source": str(source), "modules": ["quick"], **change}
    body = {k: v for k, v in body.items() if v is not None}
    async with api_client(create_api(app)) as client:
        response = await client.post("/v1/jobs", json=body)
        assert_error(response, 422, "validation_error", field)
        message = response.json()["error"]["message"]
        assert field.split(".")[0] in message or "nope" in message
        listed = (await client.get("/v1/jobs")).json()
    assert listed["items"] == []  # nothing was created


class Marked(orchestrator.BaseModule):
    """Declares the one option it reads."""

    name = "marked"
    option_names = frozenset({"markers"})

    async def run(self, context: orchestrator.ModuleContext) -> dict[str, Any]:
        return {"markers": context.options.get("markers")}


async def test_options_a_module_does_not_declare_are_a_422_naming_it(tmp_path: Path) -> None:
    """A mistyped option key was ignored without a word: a module that declares the
    options it reads (every built-in one: none) refuses any other, naming the field."""
    from orchestrator.modules.builtin.todos import TodosModule

    source = make_source(tmp_path)
    registry = ModuleRegistry([Marked(), TodosModule()])
    async with open_backend_app("sqlite", tmp_path, registry=registry) as opened, api_client(create_api(opened)) as c:
        body = {"project_id": "acme", "source": str(source)}
        refused = {
            "marked": ({"markes": ["TODO"]}, "marked has no option markes (it takes markers)"),
            "todos": ({"markers": ["TODO"]}, "todos has no option markers (it takes no options)"),
        }
        for module, (options, message) in refused.items():
            answer = await c.post(
                "/v1/jobs", json={**body, "modules": [module], "options": {"module_options": {module: options}}}
            )
            field = f"options.module_options.{module}"
            assert_error(answer, 422, "validation_error", field)
            assert answer.json()["error"]["message"] == f"{field}: {message}"
        accepted = await c.post(
            "/v1/jobs",
            json={**body, "modules": ["marked"], "options": {"module_options": {"marked": {"markers": [1]}}}},
        )
        assert accepted.status_code == 201, accepted.text
        assert [job["modules"] for job in (await c.get("/v1/jobs")).json()["items"]] == [["marked"]]


async def test_malformed_and_wrongly_typed_bodies_are_422(app: App) -> None:
    async with api_client(create_api(app)) as client:
        # Not UTF-8 (found by tests/test_api_fuzz.py: it was an undocumented 400).
        for content in (
            b"{not json",
            b"[1, 2]",
            b'"just a string"',
            b"",
            b"null",
            b"\xff\xfe{",
            b'{"project_id": "\xe9"}',
        ):
            response = await client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
            assert_error(response, 422, "validation_error")
            # The body is named, not a character position ("field": "1") nor nothing.
            assert response.json()["error"]["field"] in ("body", "project_id"), (content, response.text)
        broken = await client.post("/v1/jobs", content=b'{"project_id": ', headers={"content-type": "application/json"})
        assert broken.json()["error"]["message"] == "request body is not valid JSON: Expecting value at character 15"
        wrong_type = await client.post("/v1/jobs", json={"project_id": 12, "source": ["x"]})
        assert_error(wrong_type, 422, "validation_error")


async def test_a_lone_surrogate_the_error_quotes_is_escaped_in_a_422(tmp_path: Path) -> None:
    """A module that declares its options refused the key, quoting it as received
    ("\\ud800" in JSON: a lone surrogate), and encoding the error body failed: a 500."""
    from orchestrator.modules.builtin.todos import TodosModule

    source = make_source(tmp_path)
    content = (
        f'{{"project_id": "acme", "source": "{source}", "modules": ["todos"], '
        '"options": {"module_options": {"todos": {"\\ud800": 1}}}}'
    )
    registry = ModuleRegistry([TodosModule()])
    async with open_backend_app("sqlite", tmp_path, registry=registry) as opened, api_client(create_api(opened)) as c:
        response = await c.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
        listed = await c.get("/v1/jobs")
    assert_error(response, 422, "validation_error", "options.module_options.todos")
    assert response.json()["error"]["message"] == (
        "options.module_options.todos: todos has no option \\ud800 (it takes no options)"
    )
    assert listed.json()["items"] == []


async def test_a_body_nested_too_deeply_is_a_documented_422(app: App, source: Path) -> None:
    # Well under the body limit, but deeper than the JSON parser recurses (it was an
    # undocumented 400 "There was an error parsing the body").
    depth = 100_000
    nested = "[" * depth + "]" * depth
    options = f'{{"module_options": {{"quick": {{"x": {nested}}}}}}}'
    content = f'{{"project_id": "acme", "source": "{source}", "options": {options}}}'
    async with api_client(create_api(app)) as client:
        response = await client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
        listed = await client.get("/v1/jobs")
    assert (response.status_code, response.json()) == (
        422,
        {
            "error": {
                "status": 422,
                "code": "validation_error",
                "message": "request body is not valid JSON: nested too deeply",
                "field": "body",
            }
        },
    )
    assert listed.json()["items"] == []


async def test_unknown_ids_are_404(app: App) -> None:
    async with api_client(create_api(app)) as client:
        for method, path in [
            ("GET", "/v1/jobs/no-such-job"),
            ("POST", "/v1/jobs/no-such-job/cancel"),
            ("GET", "/v1/jobs/no-such-job/events"),
            ("GET", "/v1/jobs/no-such-job/deliveries"),
            ("GET", "/v1/webhooks/no-such-hook"),
            ("DELETE", "/v1/webhooks/no-such-hook"),
            ("GET", "/v1/webhooks/no-such-hook/deliveries"),
        ]:
            response = await client.request(method, path)
            assert_error(response, 404, "not_found")
        assert_error(await client.get("/v1/nothing-here"), 404)


async def test_bodies_over_the_limit_are_413(app: App, source: Path) -> None:
    api = create_api(app, max_body_bytes=2048)
    big = {"project_id": "acme/api", "source": str(source), "modules": ["quick"], "pad": "x" * 4096}
    encoded = json.dumps(big).encode()
    async with api_client(api) as client:
        announced = await client.post("/v1/jobs", content=encoded, headers={"content-type": "application/json"})
        assert_error(announced, 413, "body_too_large")

        async def chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
            for i in range(0, len(data), size):
                yield data[i : i + size]

        # No content-length: the body arrives in chunks (Transfer-Encoding: chunked).
        streamed = await client.post("/v1/jobs", content=chunks(encoded), headers={"content-type": "application/json"})
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413, "body_too_large")

        # A streamed body under the limit is read as usual.
        small = json.dumps({"project_id": "acme/api", "source": str(source), "modules": ["quick"]}).encode()
        accepted = await client.post(
            "/v1/jobs", content=chunks(small, 16), headers={"content-type": "application/json"}
        )
        assert accepted.status_code == 201, accepted.text

        # A webhook subscription body is limited the same way.
        hook = {"project_id": "acme/api", "url": "https://example.com/h", "secret": "s" * 16, "pad": "y" * 4096}
        assert_error(await client.post("/v1/webhooks", json=hook), 413, "body_too_large")
        assert (await client.get("/v1/jobs")).json()["items"][0]["id"] == accepted.json()["id"]


async def test_bearer_token_is_required_when_set(app: App, source: Path) -> None:
    api = create_api(app, token="t0ps3cret-token")
    async with api_client(api) as client:
        missing = await client.get("/v1/jobs")
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(await client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(await client.get("/v1/jobs", headers={"Authorization": "t0ps3cret-token"}), 401)
        assert_error(await client.get("/v1/jobs", headers={"Authorization": "Basic t0ps3cret-token"}), 401)
        body = {"project_id": "acme/api", "source": str(source), "modules": ["quick"]}
        assert_error(await client.post("/v1/jobs", json=body), 401, "unauthorized")
        assert_error(await client.post("/v1/jobs/x/cancel"), 401, "unauthorized")
        assert_error(await client.get("/v1/webhooks"), 401, "unauthorized")
        assert "t0ps3cret-token" not in missing.text

        authorized = {"Authorization": "Bearer t0ps3cret-token"}
        listed = await client.get("/v1/jobs", headers=authorized)
        assert listed.status_code == 200, listed.text
        created = await client.post("/v1/jobs", json=body, headers=authorized)
        assert created.status_code == 201, created.text
        lowercase = await client.get(
            f"/v1/jobs/{created.json()['id']}", headers={"authorization": "bearer t0ps3cret-token"}
        )
        assert lowercase.status_code == 200

        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


async def test_readiness_follows_the_store(app: App) -> None:
    async with api_client(create_api(app)) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "version": orchestrator.__version__}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "store": app.store.backend}

        await app.store.close()  # under the running app

        not_ready = await client.get("/readyz")
        assert_error(not_ready, 503, "store_unavailable")
        assert (await client.get("/healthz")).status_code == 200  # the process is still up
        assert_error(await client.get("/v1/jobs"), 503, "store_unavailable")


INVALID_WEBHOOKS = [
    pytest.param({"url": "ftp://hooks.example.com/h"}, "url", id="not-http"),
    pytest.param({"url": "http:///no-host"}, "url", id="no-host"),
    pytest.param({"url": "https://user:pw@hooks.example.com/h"}, "url", id="credentials"),
    # These were a 500 (urlsplit raised) or were accepted and then crashed the dispatcher.
    pytest.param({"url": "http://[::1"}, "url", id="unclosed-ipv6"),
    pytest.param({"url": "http://[zz]/h"}, "url", id="bad-ipv6"),
    pytest.param({"url": "http://hooks.example.com:99999/h"}, "url", id="port-out-of-range"),
    pytest.param({"url": "http://hooks.example.com:-1/h"}, "url", id="negative-port"),
    pytest.param({"url": "http://hooks\x00.example.com/h"}, "url", id="nul-in-host"),
    pytest.param({"secret": "short"}, "secret", id="short-secret"),
    pytest.param({"events": ["job.lifecycle.nope"]}, "events.0", id="unknown-event"),
    pytest.param({"events": []}, "events", id="no-events"),
    pytest.param({"project_id": "bad id!"}, "project_id", id="bad-project-id"),
    pytest.param({"extra": True}, "extra", id="extra-field"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_WEBHOOKS)
async def test_invalid_webhook_subscriptions_name_the_field(app: App, change: dict[str, Any], field: str) -> None:
    body = {"project_id": "acme/api", "url": "https://hooks.example.com/h", "secret": "s" * 16, **change}
    async with api_client(create_api(app)) as client:
        assert_error(await client.post("/v1/webhooks", json=body), 422, "validation_error", field)
        assert (await client.get("/v1/webhooks")).json() == []


async def test_webhook_subscriptions_round_trip(app: App) -> None:
    body = {"project_id": "acme/api", "url": "https://hooks.example.com/h?x=1", "secret": "s" * 16}
    async with api_client(create_api(app)) as client:
        created = await client.post("/v1/webhooks", json={**body, "events": ["job.lifecycle.fail"] * 2})
        assert created.status_code == 201, created.text
        hook = created.json()
        assert hook["events"] == ["job.lifecycle.fail"]  # duplicates dropped
        assert set(hook) == {"id", "project_id", "url", "url_sha256", "events", "created_ns"}
        # The URL may be a secret: its host, and a fingerprint an operator can recompute.
        assert hook["url"] == "https://hooks.example.com/…"
        assert hook["url_sha256"] == hashlib.sha256(b"https://hooks.example.com/h?x=1").hexdigest()[:16]
        assert "x=1" not in created.text
        everything = await client.post("/v1/webhooks", json=body)
        assert len(everything.json()["events"]) == 6  # every subscribable event by default
        assert (await client.get(f"/v1/webhooks/{hook['id']}")).json() == hook
        assert len((await client.get("/v1/webhooks", params={"project_id": "acme/api"})).json()) == 2
        assert (await client.get("/v1/webhooks", params={"project_id": "other"})).json() == []
        deliveries = f"/v1/webhooks/{hook['id']}/deliveries"
        assert (await client.get(deliveries)).json() == []
        assert (await client.get(deliveries, params={"before": (1 << 63) - 1})).json() == []
        for before in (0, 1 << 63, "x", "1.5"):
            assert_error(await client.get(deliveries, params={"before": before}), 422, "validation_error", "before")
        deleted = await client.delete(f"/v1/webhooks/{hook['id']}")
        assert deleted.status_code == 204
        assert_error(await client.get(f"/v1/webhooks/{hook['id']}"), 404, "not_found")
        assert_error(await client.delete(f"/v1/webhooks/{hook['id']}"), 404, "not_found")
