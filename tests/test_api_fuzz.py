"""Schemathesis against the served OpenAPI document: whatever a client sends, the API
answers without a server error, with a documented status, and with a body that conforms
to the document.

The application under test is a real SQLite-backed App with no worker (jobs stay
queued). Schemathesis calls ASGI apps from one event loop of its own, so the App is
opened there, on the ASGI lifespan startup, and closed on its shutdown."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_helpers import make_source, open_backend_app
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import Receive, Scope, Send

from orchestrator.api.app import create_api

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class ServedApp:
    """The API around an App opened on lifespan startup, in the server's event loop,
    on a SQLite file under ``root`` (which :meth:`use` changes, restarting the lifespan)."""

    def __init__(self) -> None:
        # Until a test chooses its tmp_path: where the document is first served from.
        self._scratch = tempfile.TemporaryDirectory(prefix="orchestrator-fuzz-")
        self.root = Path(self._scratch.name)
        self.source = make_source(self.root)
        self._stack = contextlib.AsyncExitStack()
        self._api: Any = None

    def use(self, root: Path) -> None:
        """Close the current App; the next request opens a fresh one under ``root``."""
        shutdown_lifespans()
        self.root = root
        self.source = make_source(root)
        self._scratch.cleanup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self._api is not None, "the lifespan did not start"
        await self._api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    app = await self._stack.enter_async_context(open_backend_app("sqlite", self.root))
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Schemathesis calls with Host "testserver"; the Host check has its own tests.
                self._api = create_api(app, max_body_bytes=64 * 1024, allowed_hosts=("testserver", "localhost"))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._api = None
                await self._stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


SERVED = ServedApp()
schema = schemathesis.openapi.from_asgi("/openapi.json", SERVED)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedApp]:
    """A fresh App (and SQLite file) per operation under test, closed afterwards."""
    SERVED.use(tmp_path)
    try:
        yield SERVED
    finally:
        shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    database=None,
    # ``served`` is one App per operation on purpose (examples share it, like clients share a server).
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_the_api_honours_its_openapi_document(case: schemathesis.Case, served: ServedApp) -> None:
    # Random paths never exist and random strings are rarely http(s) URLs: point half of
    # the generated jobs at a real project and half of the subscriptions at a real URL,
    # so the success paths (201 and their bodies) are fuzzed too.
    body = case.body
    if case.method == "POST" and isinstance(body, dict):
        if case.path == "/v1/jobs" and isinstance(body.get("source"), str) and len(body["source"]) % 2 == 0:
            body["source"] = str(served.source)
        if case.path == "/v1/webhooks" and isinstance(body.get("url"), str) and len(body["url"]) % 2 == 0:
            body["url"] = "https://hooks.example.com/orchestrator"
    case.call_and_validate(checks=CHECKS)
