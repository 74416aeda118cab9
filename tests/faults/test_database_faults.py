"""Database faults.

* PostgreSQL becomes unreachable mid-run and comes back (a TCP proxy the test
  controls sits between the worker and the server): operations fail with the typed
  PersistenceError (the API answers 503), the worker logs the outage a few times with
  context (rate-limited, not once per poll), backs off, and recovers: jobs submitted
  before, during and after the outage all complete, none is lost or left Running
  without a lease.
* SQLite ``database is locked``: another connection holding the write lock for half a
  second delays a write, it never fails it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from pg_helpers import history_rows, query
from pydantic import SecretStr

from faults.helpers import FaultCluster, events_named, figures, json_lines, path_problems
from faults.tcp_proxy import TcpProxy
from orchestrator.api.app import create_api
from orchestrator.bootstrap import open_app
from orchestrator.domain import Job, JobOptions, JobStatus, PersistenceError, TraceContext
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.workflow import JobWorkflow

TERMINAL = ("completed", "failed", "cancelled")


def quiet() -> JobTelemetry:
    return JobTelemetry(NoOpTracerProvider(), NoOpMeterProvider())


def sleepy(source: Path, seconds: float) -> dict[str, Any]:
    return {
        "project_id": "db-faults",
        "source": str(source),
        "modules": ["flaky"],
        "options": {"module_options": {"flaky": {"mode": "sleep", "seconds": seconds}}},
    }


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_postgres_outage_mid_run_fails_typed_logs_once_ish_and_recovers(
    postgres_url: str, fault_db_url: str, fault_plugin_dir: Path, fault_plugin: Any, tmp_path: Path, soak: bool
) -> None:
    outage_seconds = 20.0 if soak else 4.0
    per_batch = 40 if soak else 15
    source = tmp_path / "project"
    source.mkdir()
    proxy = TcpProxy("127.0.0.1", int(httpx.URL(postgres_url).port or 5432))
    proxy.start()
    proxied_url = proxy.url_for(fault_db_url)
    cluster = FaultCluster(tmp_path, proxied_url, fault_plugin_dir)
    registry = ModuleRegistry([fault_plugin.Flaky(), fault_plugin.Noop()])
    submitted: list[Job] = []
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        direct = Settings(database_url=SecretStr(fault_db_url), data_dir=tmp_path / "direct", load_entry_points=False)
        via_proxy = Settings(
            database_url=SecretStr(proxied_url), data_dir=tmp_path / "probe", load_entry_points=False, pg_pool_size=2
        )
        async with (
            open_app(direct, registry=registry, telemetry=quiet()) as app,
            open_app(via_proxy, registry=registry, telemetry=quiet()) as probe,
        ):
            worker = await anyio.to_thread.run_sync(
                lambda: cluster.start_worker(
                    "w", lease_seconds=1.5, reap_seconds=0.3, poll_seconds=0.5, cancel_poll_seconds=0.2, max_attempts=5
                )
            )
            seen["worker"] = worker
            for i in range(per_batch):
                submitted.append(await app.create.execute(sleepy(source, 0.1 + (i % 5) * 0.15)))

            async def some_done() -> bool:
                """Some jobs done and some running: cut now. If the worker ran through the
                batch before we looked, add a few longer jobs and look again."""
                done = await app.store.list_jobs(status=JobStatus.COMPLETED, limit=1000)
                running = await app.store.list_jobs(status=JobStatus.RUNNING, limit=1000)
                if len(done) >= 3 and running:
                    return True
                if len(done) == len(submitted):
                    for _ in range(4):
                        submitted.append(await app.create.execute(sleepy(source, 0.8)))
                return False

            with anyio.fail_after(30):
                while not await some_done():
                    await anyio.sleep(0.02)
            seen["running at cut"] = len(await app.store.list_jobs(status=JobStatus.RUNNING, limit=100))

            # -- the outage ------------------------------------------------------------
            cut_at = time.monotonic()
            seen["cut_ts"] = time.time()
            proxy.cut()
            with pytest.raises(PersistenceError) as raised:
                await probe.store.get(submitted[0].id)
            seen["typed error"] = f"{type(raised.value).__name__}: {raised.value.message}"
            assert raised.value.category == "persistence"
            with pytest.raises(PersistenceError):
                await probe.create.execute(sleepy(source, 0.1))
            api = create_api(probe)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://localhost") as client:
                asked = time.monotonic()
                ready = await client.get("/readyz")
                created = await client.post("/v1/jobs", json=sleepy(source, 0.1))
                answered = time.monotonic() - asked
            seen["api during outage"] = (ready.status_code, created.status_code, created.json()["error"]["code"])
            seen["api answered in (s)"] = round(answered, 2)
            assert ready.status_code == 503
            assert created.status_code == 503
            assert answered < 5.0, "the API took the pool timeout to say the store is unavailable"
            # Jobs keep arriving (through another path to the database) during the outage.
            for i in range(per_batch):
                submitted.append(await app.create.execute(sleepy(source, 0.1 + (i % 3) * 0.1)))
            await anyio.sleep(max(0.0, outage_seconds - (time.monotonic() - cut_at)))
            seen["connection attempts during outage"] = proxy.refused_while_cut
            proxy.restore()
            seen["restore_ts"] = time.time()
            restored_at = time.monotonic()
            with anyio.fail_after(30):  # the probe's pool reconnects after the outage
                while True:
                    try:
                        await probe.store.ping()
                        break
                    except PersistenceError:
                        await anyio.sleep(0.1)
            seen["store usable again after (s)"] = round(time.monotonic() - restored_at, 2)
            for _ in range(per_batch):
                submitted.append(await app.create.execute(sleepy(source, 0.1)))

            async def all_terminal() -> bool:
                for job in submitted:
                    if not (await app.store.get(job.id)).status.terminal:
                        return False
                return True

            with anyio.fail_after(60):
                while not await all_terminal():
                    assert worker.alive(), worker.describe()
                    await anyio.sleep(0.2)
            seen["recovered in (s)"] = round(time.monotonic() - restored_at, 2)

    try:
        anyio.run(scenario)
        worker = seen["worker"]
        worker.terminate()
        rc = worker.wait(30)
    finally:
        cluster.close()
        proxy.close()

    assert rc == 0, worker.describe()
    rows = {r["id"]: r for r in query(fault_db_url, "SELECT * FROM jobs")}
    ids = [job.id for job in submitted]
    lost = [i for i in ids if i not in rows]
    stuck = [i for i in ids if i in rows and rows[i]["status"] not in TERMINAL]
    unleased = query(fault_db_url, "SELECT id FROM jobs WHERE status = 'running' AND lease_owner IS NULL")
    illegal = {i: p for i in ids if (p := path_problems(history_rows(fault_db_url, i)))}
    statuses = Counter(rows[i]["status"] for i in ids if i in rows)

    records = json_lines(worker.output())
    outage = [
        r
        for r in events_named(records, "store.retry", "operation.error")
        if seen["cut_ts"] - 0.5 <= _ts(r) <= seen["restore_ts"] + 2.0
    ]
    by_event = Counter(f"{r.get('event')} {r.get('operation', '')}".strip() for r in outage)
    figures(
        "PostgreSQL outage",
        {
            "outage (s)": outage_seconds,
            "jobs (before / during / after)": f"{len(submitted) - 2 * per_batch} / {per_batch} / {per_batch}",
            "jobs running at the cut": seen["running at cut"],
            "direct store call during the outage": seen["typed error"][:110],
            "API during the outage (readyz, create, code)": seen["api during outage"],
            "  both answered within (s)": seen["api answered in (s)"],
            "worker connection attempts during the outage": seen["connection attempts during outage"],
            "outage log records (store.retry, operation.error)": f"{len(outage)} {dict(by_event)}",
            "a store in this process usable again after (s)": seen["store usable again after (s)"],
            "all jobs terminal within (s) of restore": seen["recovered in (s)"],
            "final statuses": dict(statuses),
            "recovered attempts (attempt > 1)": sum(1 for i in ids if rows[i]["attempt"] > 1),
            "lost": len(lost),
            "stuck": len(stuck),
            "running without lease": len(unleased),
            "illegal transitions": len(illegal),
        },
    )
    assert not lost
    assert not stuck
    assert not unleased
    assert not illegal, illegal
    assert statuses == {"completed": len(ids)}, {
        i: (rows[i]["status"], rows[i]["reason"], rows[i]["error_phase"])
        for i in ids
        if rows[i]["status"] != "completed"
    }
    # Logged with context, a few times, not once per poll or per failed call.
    assert outage, "the outage was not logged"
    # Per loop (claim, heartbeat, reaper, webhooks, listen) once per interval, plus at most
    # a record or two per job in flight at the cut (concurrency 4): never one per poll.
    polls = [r for r in outage if r.get("operation") in ("workflow.claim", "store.claim", "worker.claim")]
    assert len(polls) <= (6 if soak else 3), polls
    assert len(outage) <= (24 if soak else 16), by_event
    assert all("S3cret" not in str(r) for r in outage)
    store_errors = [r for r in outage if r.get("target")]
    assert store_errors, "no record names the unreachable target"
    assert all(r["target"].startswith("127.0.0.1:") for r in store_errors)
    # Backoff: the worker does not hammer the server while it is away.
    assert seen["connection attempts during outage"] < 25 * outage_seconds


def _ts(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["ts"]).timestamp()


# -- SQLite lock contention ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("busy_timeout", [5.0, 0.05], ids=["busy-handler", "store-retries"])
async def test_sqlite_database_is_locked_is_retried_not_surfaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, busy_timeout: float
) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteJobStore(path, busy_timeout=busy_timeout)
    await store.open()
    workflow = JobWorkflow(store, quiet())
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    held = 0.5
    try:
        job = Job.new(
            project_id="locks",
            source=str(tmp_path),
            modules=("noop",),
            options=JobOptions(),
            trace=TraceContext.new(),
        )
        caplog.set_level(logging.WARNING, logger="orchestrator")
        timings = []
        for step in ("insert", "enqueue", "claim"):
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            release = threading.Timer(held, lambda: holder.execute("COMMIT"))
            release.start()
            started = time.perf_counter()
            try:
                if step == "insert":
                    job = await workflow.create(job)
                elif step == "enqueue":
                    job = await workflow.transition(job, JobStatus.QUEUED, reason="enqueued")
                else:
                    claimed = await workflow.claim("w1", lease_seconds=30)
                    assert claimed is not None
                    job = claimed
            finally:
                release.join()
            timings.append(time.perf_counter() - started)
        assert job.status is JobStatus.RUNNING
        history = await store.history(job.id)
        assert [(e.status_from, e.status_to) for e in history] == [
            (None, JobStatus.PENDING),
            (JobStatus.PENDING, JobStatus.QUEUED),
            (JobStatus.QUEUED, JobStatus.RUNNING),
        ]
    finally:
        holder.close()
        await store.close()
    retries = [r for r in caplog.records if getattr(r, "otel.event.name", None) == "store.retry"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    figures(
        f"SQLite write lock held {held} s by another connection (busy_timeout {busy_timeout} s)",
        {
            "writes (insert, enqueue, claim)": "all succeeded",
            "each waited (s)": [round(t, 3) for t in timings],
            "store.retry warnings": len(retries),
            "PersistenceError / error records": len(errors),
        },
    )
    assert all(t >= held * 0.8 for t in timings), timings
    assert not errors, [r.getMessage() for r in errors]
    if busy_timeout < held:
        assert 1 <= len(retries) <= 2, [r.getMessage() for r in retries]  # rate-limited
