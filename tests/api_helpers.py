"""Test helpers (not tests) for the HTTP API and webhook tests: an App on a real store
(SQLite file or a fresh PostgreSQL schema), an in-process worker, an httpx client on the
ASGI app, and bounded polling."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from fastapi import FastAPI
from telemetry_helpers import FakeModule, hang, ok

from orchestrator.bootstrap import App, open_app
from orchestrator.job_queue import Worker
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.stores import JobStore
from orchestrator.stores.postgres import PostgresJobStore
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.webhooks.dispatcher import WebhookDispatcher
from orchestrator.webhooks.models import Delivery
from orchestrator.webhooks.store import WebhookStore

__all__ = [
    "TERMINAL",
    "api_client",
    "dispatching",
    "fast_settings",
    "make_source",
    "open_backend_app",
    "poll",
    "quick_registry",
    "running_worker",
    "settled",
    "wait_terminal",
]

T = TypeVar("T")

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def make_source(root: Path) -> Path:
    """A tiny project to analyse."""
    source = root / "project"
    source.mkdir(parents=True, exist_ok=True)
    (source / "main.py").write_text("print('hello')\n")
    return source


def quick_registry() -> ModuleRegistry:
    """``quick`` and ``other`` return at once; ``hang`` runs until cancelled."""
    return ModuleRegistry([FakeModule("quick", ok()), FakeModule("other", ok()), FakeModule("hang", hang())])


def fast_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "poll_seconds": 0.05,
        "cancel_poll_seconds": 0.05,
        "reap_seconds": 60.0,
        "shutdown_grace_seconds": 0.5,
        "load_entry_points": False,
        # API jobs are confined to the source roots: tests make their projects under tmp_path.
        "source_roots": (tmp_path,),
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def open_backend_app(
    backend: str,
    tmp_path: Path,
    *,
    postgres_url: str | None = None,
    pg_schema: str | None = None,
    telemetry: JobTelemetry | None = None,
    registry: ModuleRegistry | None = None,
    **settings: Any,
) -> AsyncIterator[App]:
    """An opened App on ``backend``: a SQLite file under ``tmp_path`` or PostgreSQL in
    ``pg_schema`` (Settings cannot name a schema, so the store is built here)."""
    store: JobStore
    if backend == "sqlite":
        store = SQLiteJobStore(tmp_path / "data" / "orchestrator.db")
    else:
        assert postgres_url is not None
        assert pg_schema is not None
        store = PostgresJobStore(postgres_url, schema=pg_schema, min_size=1, max_size=6)
    async with open_app(
        fast_settings(tmp_path, **settings),
        store=store,
        telemetry=telemetry or JobTelemetry(),
        registry=registry or quick_registry(),
    ) as app:
        yield app


@asynccontextmanager
async def running_worker(app: App, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker claiming jobs in the background; stopped (bounded) on exit."""
    worker = app.worker(**kwargs)
    done = anyio.Event()

    async def run() -> None:
        try:
            await worker.run()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield worker
        finally:
            worker.stop()
            with anyio.move_on_after(15):
                await done.wait()
            tg.cancel_scope.cancel()  # a no-op once it stopped; bounds a stuck shutdown


def api_client(api: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    # "localhost": a Host name the API answers to by default (see the Host check).
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://localhost", **kwargs)


async def poll(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await anyio.sleep(interval)


async def wait_terminal(client: httpx.AsyncClient, job_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    """GET the job until it is terminal; returns its last representation."""

    async def terminal() -> dict[str, Any] | None:
        response = await client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] in TERMINAL else None

    return await poll(terminal, timeout=timeout, what=f"job {job_id} to finish")


@asynccontextmanager
async def dispatching(instance: WebhookDispatcher) -> AsyncIterator[anyio.CancelScope]:
    """``instance.run()`` in the background; cancelled (killed) on exit or through the scope."""
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await instance.run()

        tg.start_soon(run)
        try:
            yield scope
        finally:
            tg.cancel_scope.cancel()


async def settled(hooks: WebhookStore, job_id: str, count: int, *, timeout: float = 15.0) -> list[Delivery]:
    """The job's ``count`` deliveries once none is pending any more."""

    async def check() -> list[Delivery] | None:
        found = await hooks.list_deliveries(job_id=job_id)
        return found if len(found) == count and all(d.status != "pending" for d in found) else None

    return await poll(check, timeout=timeout, what=f"{count} deliveries of job {job_id} to settle")
