"""Test helpers (not tests) for the HTTP API and webhook tests: an App on a real store
(SQLite file or a fresh PostgreSQL schema), an in-process worker, an httpx client on the
ASGI app, and bounded polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
    "Served",
    "api_client",
    "dispatching",
    "fast_settings",
    "make_source",
    "open_backend_app",
    "poll",
    "quick_registry",
    "running_worker",
    "serve_env",
    "settled",
    "start_serve",
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


# -- a real ``orchestrator serve`` process ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_env(data_dir: Path, **settings: object) -> dict[str, str]:
    """A clean environment for ``orchestrator serve``: no ORCHESTRATOR_/OTEL_ variable
    of ours leaks in, telemetry goes to files in ``data_dir``, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OTEL_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        ORCHESTRATOR_DATA_DIR=str(data_dir),
        ORCHESTRATOR_LOG_FORMAT="json",
        ORCHESTRATOR_LOAD_ENTRY_POINTS="false",
        ORCHESTRATOR_POLL_SECONDS="0.05",
        ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS="2",
    )
    for name, value in settings.items():
        env[name if name.startswith(("OTEL_", "ORCHESTRATOR_")) else f"ORCHESTRATOR_{name.upper()}"] = str(value)
    return env


@dataclass
class Served:
    """A running ``orchestrator serve`` on 127.0.0.1."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client whose Host header is ``localhost:<port>`` unless told otherwise."""
        headers = {"Host": f"localhost:{self.port}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, trust_env=False, **kwargs)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL and a failure after ``timeout`` s)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(f"serve ignored SIGTERM for {timeout} s:\n{self.output()[-3000:]}") from None


def start_serve(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True, **settings: object
) -> Served:
    """``orchestrator serve`` on a free loopback port; with ``wait``, until /healthz answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / f"serve-{port}.log"
    command = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port), *args]
    if "--host" not in args:
        command += ["--host", "127.0.0.1"]
    if "--workers-in-process" not in args:
        command += ["--workers-in-process", "0"]
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command, env=env or serve_env(data_dir, **settings), stdout=log, stderr=subprocess.STDOUT
        )
    served = Served(popen, port, log_path, data_dir)
    if wait:
        deadline = time.monotonic() + 30
        while True:
            if popen.poll() is not None:
                raise AssertionError(f"serve exited with {popen.returncode}:\n{served.output()[-3000:]}")
            try:
                with served.client() as client:
                    if client.get("/healthz").status_code == 200:
                        return served
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                served.stop()
                raise AssertionError(f"serve did not answer within 30 s:\n{served.output()[-3000:]}")
            time.sleep(0.05)
    return served
