"""Real worker processes on one PostgreSQL database.

Every test gets a fresh database; workers are ``python -m orchestrator worker``
subprocesses, each with its own data dir (so its own telemetry files), running the
test plugin's modules (``sleepy``, ``noop``) loaded through a real entry point.
Proves: many processes drain one queue with every job run exactly once; a worker
killed mid-job is recovered (and its lost attempt shows in the trace); a job whose
workers keep dying fails with ``worker_lost``; a cancel from another process and a
SIGTERM reach a running job; an idle worker picks a new job up at once (LISTEN/NOTIFY).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import anyio
import psycopg
import pytest
from faults.helpers import json_lines
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from pg_helpers import (
    Cluster,
    WorkerProc,
    fresh_database,
    history_rows,
    job_row,
    load_plugin,
    query,
    wait_for,
    write_plugin,
)
from pydantic import SecretStr

from orchestrator.bootstrap import App, open_app
from orchestrator.cli.views import Span
from orchestrator.domain import Job, JobStatus, now_ns
from orchestrator.modules.base import BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry

#: Short leases so a killed worker's job is recovered in about two seconds.
FAST_LEASES: dict[str, object] = {"lease_seconds": 1.5, "reap_seconds": 0.3}
STATUS_ERROR = 2  # OTLP span status code


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin: a package and its dist-info with ``orchestrator.modules`` entry points."""
    return write_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="session")
def plugin(plugin_dir: Path) -> ModuleType:
    return load_plugin(plugin_dir)


@pytest.fixture
def db_url(postgres_url: str) -> Iterator[str]:
    """A fresh database of its own for each test, dropped WITH (FORCE) afterwards."""
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture
def cluster(tmp_path: Path, db_url: str, plugin_dir: Path) -> Iterator[Cluster]:
    """Worker subprocesses on ``db_url``; any left running are killed at teardown."""
    started = Cluster(tmp_path, db_url, plugin_dir)
    try:
        yield started
    finally:
        started.close()


# -- helpers ----------------------------------------------------------------------------


def _settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        database_url=SecretStr(db_url), data_dir=tmp_path / "in-process", load_entry_points=False, **overrides
    )


def _quiet_telemetry() -> JobTelemetry:
    return JobTelemetry(NoOpTracerProvider(), NoOpMeterProvider())


def _open_submitter(db_url: str, tmp_path: Path, plugin: ModuleType) -> Any:
    """An in-process app that creates jobs (the plugin's modules registered directly)."""
    registry = ModuleRegistry([plugin.Sleepy(), plugin.Noop()])
    return open_app(_settings(db_url, tmp_path), registry=registry, telemetry=_quiet_telemetry())


def request(source: Path, module: str = "noop", **options: object) -> dict[str, Any]:
    body: dict[str, Any] = {"project_id": "pg-workers", "source": str(source), "modules": [module]}
    if options:
        body["options"] = {"module_options": {module: options}}
    return body


def submit(db_url: str, tmp_path: Path, plugin: ModuleType, requests: list[dict[str, Any]]) -> list[Job]:
    """Create (and queue) jobs in this process."""

    async def go() -> list[Job]:
        async with _open_submitter(db_url, tmp_path, plugin) as app:
            return [await app.create.execute(r) for r in requests]

    return anyio.run(go)


def wait_status(db_url: str, job_id: str, *statuses: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = job_row(db_url, job_id)
        return row if row is not None and row["status"] in statuses else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}")


def wait_running_on(db_url: str, worker: WorkerProc, job_id: str, *, attempt: int, timeout: float = 30) -> None:
    """Until ``worker`` runs ``job_id`` (leased to it, at ``attempt``) and its module started."""

    def check() -> bool:
        if not worker.alive():
            raise AssertionError(f"worker died: {worker.describe()}")
        row = job_row(db_url, job_id)
        leased = (
            row is not None
            and row["status"] == "running"
            and row["attempt"] == attempt
            and worker.owns(row["lease_owner"])
        )
        return leased and (worker.data_dir / f"started-{job_id}-{attempt}").exists()

    wait_for(check, timeout=timeout, what=f"job {job_id} attempt {attempt} running on worker {worker.name}")


def stop(worker: WorkerProc, timeout: float = 20) -> int:
    """SIGTERM, and the exit status (its telemetry is flushed on the way out)."""
    worker.terminate()
    return worker.wait(timeout)


def transitions(history: list[dict[str, Any]]) -> list[tuple[str | None, str, str, int]]:
    return [(h["status_from"], h["status_to"], h["reason"], h["attempt"]) for h in history]


def trace_of(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def by_module(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["module"]: r for r in row["results"]}


# -- 1. many processes, one queue -------------------------------------------------------


@pytest.mark.postgres
def test_three_worker_processes_drain_300_jobs_each_exactly_once(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    total = 300
    jobs = submit(db_url, tmp_path, plugin, [request(tmp_path) for _ in range(total)])
    ids = {job.id for job in jobs}
    assert len(ids) == total

    launched = time.perf_counter()
    workers = [cluster.start_worker(name, ready=False, concurrency=4) for name in ("a", "b", "c")]
    for worker in workers:
        worker.wait_ready()

    def drained() -> bool:
        for worker in workers:
            assert worker.alive(), worker.describe()
        counts = query(db_url, "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {r["status"]: r["n"] for r in counts} == {"completed": total}

    wait_for(drained, timeout=180, interval=0.2, what="300 jobs to complete")
    wall = time.perf_counter() - launched
    for worker in workers:
        assert stop(worker) == 0, worker.describe()

    rows = query(db_url, "SELECT id, status, attempt, queued_ns, started_ns, finished_ns, results FROM jobs")
    assert {r["id"] for r in rows} == ids, "a job was lost (or appeared)"
    assert all((r["status"], r["attempt"]) == ("completed", 1) for r in rows)
    assert all([res["outcome"] for res in r["results"]] == ["ok"] for r in rows)

    per_job = query(
        db_url,
        """
        SELECT job_id,
               COUNT(*) FILTER (WHERE status_from = 'queued' AND status_to = 'running') AS claims,
               COUNT(*) FILTER (WHERE status_to IN ('completed', 'failed', 'cancelled')) AS terminals,
               COUNT(*) FILTER (WHERE status_from = 'running' AND status_to = 'queued') AS requeues,
               MIN(worker_id) FILTER (WHERE status_from = 'queued') AS claimed_by,
               MIN(worker_id) FILTER (WHERE status_to = 'completed') AS completed_by
        FROM job_history GROUP BY job_id
        """,
    )
    assert len(per_job) == total
    bad = [r for r in per_job if (r["claims"], r["terminals"], r["requeues"]) != (1, 1, 0)]
    assert not bad, f"jobs claimed or finished more than once: {bad[:5]}"
    assert all(r["claimed_by"] == r["completed_by"] for r in per_job)
    ran_by: Counter[str] = Counter()
    for r in per_job:
        owner = [w.name for w in workers if w.owns(r["claimed_by"])]
        assert len(owner) == 1, f"claimed by an unknown worker: {r['claimed_by']}"
        ran_by[owner[0]] += 1
    completed = query(db_url, "SELECT COUNT(*) AS n FROM job_history WHERE status_to = 'completed'")
    assert completed[0]["n"] == total

    # The telemetry of the three processes together: one root span per job, Completed.
    roots = [s for s in cluster.spans(workers) if s.name == "job"]
    assert Counter(s.attributes["job_id"] for s in roots) == Counter(dict.fromkeys(ids, 1))
    assert {s.attributes["status"] for s in roots} == {"completed"}

    drain_s = (max(r["finished_ns"] for r in rows) - min(r["started_ns"] for r in rows)) / 1e9
    print(
        f"\n{total} jobs by 3 workers x 4: {total / drain_s:.0f} jobs/s while draining ({drain_s:.2f} s), "
        f"{wall:.2f} s from launching the workers; per worker {dict(sorted(ran_by.items()))}"
    )


# -- 2. a worker killed mid-job ---------------------------------------------------------


@pytest.mark.postgres
def test_a_job_of_a_killed_worker_is_recovered_and_completed_by_another(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    a = cluster.start_worker("a", FAST_LEASES)
    (job,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "sleepy", seconds=4, until_attempt=1)])
    wait_running_on(db_url, a, job.id, attempt=1)
    lost_owner = job_row(db_url, job.id)["lease_owner"]  # type: ignore[index]
    a.kill()

    b = cluster.start_worker("b", FAST_LEASES)
    final = wait_status(db_url, job.id, "completed", "failed", "cancelled", timeout=30)
    assert stop(b) == 0, b.describe()

    assert (final["status"], final["attempt"]) == ("completed", 2), final
    sleepy = by_module(final)["sleepy"]
    assert sleepy["outcome"] == "ok"
    assert (sleepy["summary"]["pid"], sleepy["summary"]["attempt"]) == (b.pid, 2)

    history = history_rows(db_url, job.id)
    assert transitions(history) == [
        (None, "pending", "created", 1),
        ("pending", "queued", "enqueued", 1),
        ("queued", "running", "claimed", 1),
        ("running", "queued", "lease_expired", 2),
        ("queued", "running", "claimed", 2),
        ("running", "completed", "its module completed", 2),
    ]
    assert a.owns(history[2]["worker_id"])
    assert all(b.owns(h["worker_id"]) for h in history[3:]), "B reaps, claims and completes"

    # The trace, from A's and B's telemetry files (A's own attempt-1 spans may be
    # missing: it was SIGKILLed before exporting them).
    spans = trace_of(cluster.spans([a, b]), job.trace.trace_id)
    roots = [s for s in spans if s.name == "job"]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    assert (root.span_id, root.parent_id) == (job.trace.span_id, "")
    assert (root.attributes["status"], root.attributes["attempt"]) == ("completed", 2)

    executes = [s for s in spans if s.name == "job.execute"]
    lost = [s for s in executes if s.attributes.get("error.type") == "worker_lost"]
    assert len(lost) == 1, [s.attributes for s in executes]
    assert lost[0].attributes["attempt"] == 1
    assert lost[0].attributes["worker_id"] == lost_owner
    assert lost[0].attributes["reason"] == "lease_expired"
    assert lost[0].is_error
    assert lost[0].parent_id == root.span_id
    second = [s for s in executes if s.attributes.get("attempt") == 2]
    assert len(second) == 1
    assert not second[0].is_error
    assert "error.type" not in second[0].attributes
    assert b.owns(second[0].attributes["worker_id"])

    recovers = [e for e in root.events if e.name == "job.lifecycle.recover"]
    assert [(e.attributes["reason"], e.attributes["attempt"]) for e in recovers] == [("lease_expired", 2)]


# -- 3. workers keep dying --------------------------------------------------------------


@pytest.mark.postgres
def test_a_job_whose_workers_keep_dying_fails_with_worker_lost_after_max_attempts(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    settings = {**FAST_LEASES, "max_attempts": 2}
    a = cluster.start_worker("a", settings)
    (job,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "sleepy", seconds=60)])
    wait_running_on(db_url, a, job.id, attempt=1)
    a.kill()

    b = cluster.start_worker("b", settings)
    wait_running_on(db_url, b, job.id, attempt=2)  # B's reaper requeued it, B claimed it
    b.kill()

    # Only now C: nothing is queued, so all it can do is reap the expired lease.
    c = cluster.start_worker("c", settings)
    final = wait_status(db_url, job.id, "completed", "failed", "cancelled", timeout=30)
    assert stop(c) == 0, c.describe()

    assert (final["status"], final["attempt"]) == ("failed", 2), final
    assert final["reason"].startswith("worker_lost"), final["reason"]
    assert (final["error_category"], final["error_phase"]) == ("queue", "execute")
    assert (final["lease_owner"], final["lease_expires_ns"]) == (None, None)

    history = history_rows(db_url, job.id)
    assert [(h["status_from"], h["status_to"], h["attempt"]) for h in history] == [
        (None, "pending", 1),
        ("pending", "queued", 1),
        ("queued", "running", 1),
        ("running", "queued", 2),
        ("queued", "running", 2),
        ("running", "failed", 2),
    ]
    assert history[3]["reason"] == "lease_expired"
    assert [a.owns(history[2]["worker_id"]), b.owns(history[3]["worker_id"]), b.owns(history[4]["worker_id"])] == [
        True,
        True,
        True,
    ]
    assert c.owns(history[5]["worker_id"])
    assert history[5]["reason"] == final["reason"]

    # C closed the trace: both lost attempts (built from the stored history by the process
    # that ends the job, so a reaper killed after its recovery loses nothing), and the root.
    spans = trace_of(c.spans(), job.trace.trace_id)
    roots = [s for s in spans if s.name == "job"]
    assert len(roots) == 1
    assert roots[0].is_error
    assert (roots[0].attributes["status"], roots[0].attributes["error_category"]) == ("failed", "queue")
    lost = [s for s in spans if s.name == "job.execute" and s.attributes.get("error.type") == "worker_lost"]
    assert [s.attributes["attempt"] for s in lost] == [1, 2]


# -- 4. cancel from another process -----------------------------------------------------


@pytest.mark.postgres
def test_a_cancel_from_another_process_stops_a_running_job_within_seconds(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    worker = cluster.start_worker("w", cancel_poll_seconds=0.2)
    (job,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "sleepy", seconds=10)])
    wait_running_on(db_url, worker, job.id, attempt=1)

    launched_ns = time.time_ns()
    done = cluster.cli("cancel", job.id, "--reason", "stopped by the test")
    returned_ns = time.time_ns()
    assert done.returncode == 0, done.stderr
    assert f"cancellation of running job {job.id} requested" in done.stdout

    final = wait_status(db_url, job.id, "completed", "failed", "cancelled", timeout=10)
    print(
        f"\ncancel command ran {(returned_ns - launched_ns) / 1e6:.0f} ms; the job ended Cancelled "
        f"{(final['finished_ns'] - launched_ns) / 1e6:.0f} ms after it was launched"
    )
    # The request is made while the command runs: the job must end within ~3 s of it.
    assert launched_ns < final["finished_ns"] < returned_ns + 3_000_000_000
    assert (final["finished_ns"] - final["started_ns"]) / 1e9 < 9.0, "the module was not stopped"
    assert (final["status"], final["reason"], final["error_category"]) == (
        "cancelled",
        "stopped by the test",
        "cancelled",
    )
    assert by_module(final)["sleepy"]["outcome"] == "cancelled"
    last = history_rows(db_url, job.id)[-1]
    assert (last["status_from"], last["status_to"], last["reason"]) == ("running", "cancelled", "stopped by the test")
    assert worker.owns(last["worker_id"])
    assert worker.alive(), "the worker survives a cancelled job"
    assert stop(worker) == 0, worker.describe()


# -- 5. graceful shutdown ---------------------------------------------------------------


@pytest.mark.postgres
def test_sigterm_requeues_a_running_job_after_the_grace_period_and_another_worker_completes_it(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    first = cluster.start_worker("first", shutdown_grace_seconds=0.5)
    (job,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "sleepy", seconds=10, until_attempt=1)])
    wait_running_on(db_url, first, job.id, attempt=1)

    started = time.perf_counter()
    rc = stop(first, timeout=20)
    took = time.perf_counter() - started
    print(f"\nworker exited {took:.2f} s after SIGTERM")
    assert rc == 0, first.describe()
    assert took < 8.0, first.describe()

    requeued = job_row(db_url, job.id)
    assert requeued is not None
    assert (requeued["status"], requeued["reason"], requeued["attempt"]) == ("queued", "worker_shutdown", 2)
    assert (requeued["lease_owner"], requeued["lease_expires_ns"]) == (None, None)
    last = history_rows(db_url, job.id)[-1]
    assert (last["status_from"], last["status_to"], last["reason"], last["attempt"]) == (
        "running",
        "queued",
        "worker_shutdown",
        2,
    )
    assert first.owns(last["worker_id"])

    second = cluster.start_worker("second")
    final = wait_status(db_url, job.id, "completed", "failed", "cancelled", timeout=30)
    assert stop(second) == 0, second.describe()
    assert (final["status"], final["attempt"]) == ("completed", 2)
    summary = by_module(final)["sleepy"]["summary"]
    assert (summary["pid"], summary["attempt"], summary["slept"]) == (second.pid, 2, 0.0)


@pytest.mark.postgres
def test_a_row_lock_held_for_good_costs_a_worker_one_job_not_its_slot(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    worker = cluster.start_worker("w", FAST_LEASES, concurrency=1, pg_lock_timeout_seconds=2)
    (held,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "sleepy", seconds=1, until_attempt=1)])
    wait_running_on(db_url, worker, held.id, attempt=1)
    # A forgotten psql session holds the running job's row: the worker can write nothing
    # about it (its lease renewal, its end). Its one slot must come back all the same.
    with psycopg.connect(db_url) as locker:
        assert locker.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held.id,)).fetchall()
        (other,) = submit(db_url, tmp_path, plugin, [request(tmp_path, "noop")])
        done = wait_status(db_url, other.id, "completed", "failed", "cancelled", timeout=30)
        assert (done["status"], done["attempt"]) == ("completed", 1)
        row = job_row(db_url, held.id)
        assert row is not None
        assert (row["status"], row["attempt"]) == ("running", 1)  # nothing of it was written
        problems = [
            r
            for r in json_lines(worker.output())
            if r.get("level") in ("warning", "error") and r.get("job_id") == held.id
        ]
        messages = [str(r.get("message")) for r in problems]
        # Said where it happened (the store, with the job's fields), and by the worker.
        assert any(
            m.startswith("postgresql apply_transition failed (") and "lock timeout (SQLSTATE 55P03)" in m
            for m in messages
        ), messages
        assert any(m.startswith(f"job {held.id} left to lease-expiry recovery") for m in messages), messages
        locker.rollback()

    # The lock gone, its lease (not renewed since) has expired: the worker's own reaper
    # returns it to the queue and it runs again (at least once, as promised).
    final = wait_status(db_url, held.id, "completed", "failed", "cancelled", timeout=30)
    assert stop(worker) == 0, worker.describe()
    assert (final["status"], final["attempt"]) == ("completed", 2), final
    assert transitions(history_rows(db_url, held.id))[3:] == [
        ("running", "queued", "lease_expired", 2),
        ("queued", "running", "claimed", 2),
        ("running", "completed", "its module completed", 2),
    ]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_reaper_recovers_the_other_expired_jobs_while_one_row_is_locked(
    db_url: str, tmp_path: Path, plugin: ModuleType
) -> None:
    registry = ModuleRegistry([plugin.Sleepy(), plugin.Noop()])
    settings = _settings(db_url, tmp_path, pg_lock_timeout_seconds=0.5)
    async with open_app(settings, registry=registry, telemetry=_quiet_telemetry()) as app:
        # Two jobs of a worker that died: their leases have expired.
        dead = []
        for _ in range(2):
            job = await app.create.execute(request(tmp_path, "noop"))
            (running,) = await app.store.claim_batch(worker_id="w-dead", lease_ns=1, now_ns=now_ns(), limit=1)
            assert running.id == job.id
            dead.append(running)
        locked, other = dead
        reaper = app.worker(worker_id="w-reaper")
        with psycopg.connect(db_url) as locker:
            assert locker.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (locked.id,)).fetchall()
            with anyio.fail_after(30):
                moved = await reaper.reap()  # the locked one first (its lease expired first)
            assert moved == 1
            assert ((await app.store.get(other.id)).status, (await app.store.get(other.id)).attempt) == (
                JobStatus.QUEUED,
                2,
            )
            assert (await app.store.get(locked.id)).status is JobStatus.RUNNING
            locker.rollback()
        with anyio.fail_after(30):
            assert await reaper.reap() == 1  # and once the lock is gone, the locked one
        assert (await app.store.get(locked.id)).status is JobStatus.QUEUED


# -- 6. pickup latency ------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.anyio
async def test_an_idle_worker_picks_a_new_job_up_well_within_its_poll_interval(
    postgres_url: str, db_url: str, cluster: Cluster, tmp_path: Path, plugin: ModuleType
) -> None:
    worker = cluster.start_worker("w", poll_seconds=5)
    latencies: list[float] = []
    async with _open_submitter(db_url, tmp_path, plugin) as app:
        # A first job, not measured: once it is done the worker has found the queue empty
        # and listens (it starts listening as it first waits for work, however long its
        # start took on a loaded machine).
        for measured in (False, True, True, True, True, True):
            await anyio.sleep(1.0)  # idle: the worker is waiting for work
            job = await app.create.execute(request(tmp_path))
            with anyio.fail_after(15):
                while (current := await app.store.get(job.id)).status is not JobStatus.COMPLETED:
                    assert worker.alive(), worker.describe()
                    assert not current.status.terminal, current
                    await anyio.sleep(0.02)
            assert current.queued_ns is not None
            assert current.started_ns is not None
            if measured:
                latencies.append((current.started_ns - current.queued_ns) / 1e9)
    assert stop(worker) == 0, worker.describe()
    print(f"\npickup latency (poll interval 5 s): {', '.join(f'{s * 1000:.1f} ms' for s in latencies)}")
    assert max(latencies) < 1.0, latencies


# -- 7. in-process workers on separate stores -------------------------------------------


class Counting(BaseModule):
    """Counts its executions per job id."""

    name: ClassVar[str] = "counting"
    timeout: ClassVar[float] = 10.0

    def __init__(self, counter: Counter[str]) -> None:
        self.counter = counter

    async def run(self, context: ModuleContext) -> ModuleSummary:
        self.counter[context.job_id] += 1
        await anyio.sleep(0.005)
        return {"attempt": context.attempt}


@pytest.mark.postgres
@pytest.mark.anyio
async def test_two_in_process_workers_on_separate_postgres_stores_run_each_job_once(
    postgres_url: str, db_url: str, tmp_path: Path
) -> None:
    executions: Counter[str] = Counter()
    settings = _settings(db_url, tmp_path, concurrency=4, poll_seconds=0.5, cancel_poll_seconds=0.1)
    async with AsyncExitStack() as stack:
        apps: list[App] = [
            await stack.enter_async_context(
                open_app(settings, registry=ModuleRegistry([Counting(executions)]), telemetry=_quiet_telemetry())
            )
            for _ in range(2)
        ]
        assert apps[0].store is not apps[1].store
        body = {"project_id": "race", "source": str(tmp_path), "modules": ["counting"]}
        ids = [(await apps[i % 2].create.execute(body)).id for i in range(100)]
        workers = [app.worker(worker_id=f"w{i}") for i, app in enumerate(apps)]
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for w in workers:
                    tg.start_soon(w.run)
                ids += [(await apps[i % 2].create.execute(body)).id for i in range(100)]  # while they run
                while len(await apps[0].store.list_jobs(status=JobStatus.COMPLETED, limit=1000)) < len(ids):
                    await anyio.sleep(0.05)
                for w in workers:
                    w.stop()

        assert executions == Counter(dict.fromkeys(ids, 1)), "a job ran twice (or never)"
        assert sum(w.jobs_run for w in workers) == len(ids) == 200
        assert all(w.jobs_run > 0 for w in workers), [w.jobs_run for w in workers]
        for job_id in ids:
            final = await apps[1].store.get(job_id)
            assert (final.status, final.attempt) == (JobStatus.COMPLETED, 1)
            history = await apps[0].store.history(job_id)
            pairs = [(e.status_from, e.status_to) for e in history]
            assert pairs == [
                (None, JobStatus.PENDING),
                (JobStatus.PENDING, JobStatus.QUEUED),
                (JobStatus.QUEUED, JobStatus.RUNNING),
                (JobStatus.RUNNING, JobStatus.COMPLETED),
            ]
            assert history[2].worker_id == history[3].worker_id in ("w0", "w1")
