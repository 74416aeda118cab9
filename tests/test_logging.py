"""Structured JSON logs of one job's life: every line parses, every public entry point
logs start and finish, every transition and module has its record, and context fields
reach module worker threads."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from orchestrator.bootstrap import open_app
from orchestrator.domain import JobStatus, ModuleError
from orchestrator.modules.base import BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from otel.logs import LOGGER_NAMES, configure_logging

Record = dict[str, Any]

THREAD_LOGGER = "orchestrator.modules.test"

pytestmark = pytest.mark.anyio


class FirstModule(BaseModule):
    name: ClassVar[str] = "first"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        return {"n": 1}


class ThreadedModule(BaseModule):
    """Logs from inside a worker thread started with ``context.run_sync``."""

    name: ClassVar[str] = "threaded"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        def work() -> str:
            name = threading.current_thread().name
            logging.getLogger(THREAD_LOGGER).info("working in a thread", extra={"thread_name": name})
            return name

        thread = await context.run_sync(work)
        return {"thread": thread}


class BrokenModule(BaseModule):
    name: ClassVar[str] = "broken"
    timeout: ClassVar[float] = 5.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        raise ModuleError("cannot parse the lockfile")


MODULES = ["first", "threaded", "broken"]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the root logger and ours restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in LOGGER_NAMES}
    stream = io.StringIO()
    handler = configure_logging(level="DEBUG", fmt="json", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        handler.close()
        for extra in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(extra)
        for missing in [h for h in saved_handlers if h not in root.handlers]:
            root.addHandler(missing)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
async def records(log_stream: io.StringIO, tmp_path: Path) -> dict[str, Any]:
    """Run one job (create + a real worker) and return its parsed log records."""
    settings = Settings(data_dir=tmp_path / "data", poll_seconds=0.05, cancel_poll_seconds=0.1)
    registry = ModuleRegistry([FirstModule(), ThreadedModule(), BrokenModule()])
    async with open_app(settings, registry=registry) as app:
        job = await app.create.execute({"project_id": "proj-log", "source": str(tmp_path), "modules": MODULES})
        worker = app.worker(concurrency=1, worker_id="w-log")
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(3):
                while not (await app.store.get(job.id)).status.terminal:
                    await anyio.sleep(0.02)
            worker.stop()
        final = await app.store.get(job.id)
        history = await app.store.history(job.id)
    lines = log_stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"log line {number} is not JSON ({exc}): {line!r}")
        assert isinstance(record, dict)
        parsed.append(record)
    return {"job": final, "history": history, "records": parsed}


def having(records: list[Record], **fields: Any) -> list[Record]:
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


async def test_every_line_is_a_json_object_with_the_base_keys(records: dict[str, Any]) -> None:
    for record in records["records"]:
        assert {"ts", "level", "logger", "event", "message"} <= set(record), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}


async def test_the_job_ends_failed_because_of_the_broken_module(records: dict[str, Any]) -> None:
    assert records["job"].status is JobStatus.FAILED


@pytest.mark.parametrize(
    "operation",
    ["usecase.create_job", "usecase.execute_job", "workflow.create", "workflow.transition", "workflow.claim"],
)
async def test_each_public_entry_point_logs_start_and_finish_with_elapsed_ms(
    records: dict[str, Any], operation: str
) -> None:
    starts = having(records["records"], event="operation.start", operation=operation)
    finishes = having(records["records"], event="operation.finish", operation=operation)
    assert starts, f"no operation.start for {operation}"
    assert finishes, f"no operation.finish for {operation}"
    assert len(starts) == len(finishes)
    for record in finishes:
        assert isinstance(record["elapsed_ms"], int | float)
        assert record["elapsed_ms"] >= 0
        assert record["message"].startswith(f"{operation} finished in ")
    for record in starts:
        assert "elapsed_ms" not in record


async def test_job_entry_points_bind_the_job_to_their_records(records: dict[str, Any]) -> None:
    job = records["job"]
    for operation in ("usecase.execute_job", "workflow.create"):
        for record in having(records["records"], operation=operation):
            assert (record["job_id"], record["project_id"]) == (job.id, job.project_id), record
    for record in having(records["records"], operation="workflow.transition"):
        assert record["job_id"] == job.id
        assert record["status_to"] in {str(s) for s in JobStatus}


async def test_one_lifecycle_record_per_transition_with_its_fields(records: dict[str, Any]) -> None:
    job = records["job"]
    lifecycle = [r for r in records["records"] if str(r.get("event", "")).startswith("job.lifecycle.")]
    assert [r["event"] for r in lifecycle] == [
        "job.lifecycle.create",
        "job.lifecycle.enqueue",
        "job.lifecycle.start",
        "job.lifecycle.fail",
    ]
    assert [(r["status_from"], r["status_to"]) for r in lifecycle] == [
        ("none", "pending"),
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "failed"),
    ]
    assert (lifecycle[0]["reason"], lifecycle[0]["duration_ms"], lifecycle[0]["attempt"]) == ("created", 0, 1)
    assert lifecycle[1]["reason"] == "enqueued"
    for record in lifecycle:
        assert (record["job_id"], record["project_id"]) == (job.id, "proj-log")
        assert isinstance(record["reason"], str)
        assert record["reason"]
        assert isinstance(record["duration_ms"], int | float)
        assert record["duration_ms"] >= 0
    history = records["history"]
    assert len(history) == len(lifecycle)
    for record, entry in zip(lifecycle, history, strict=True):
        assert record["status_from"] == str(entry.status_from or "none")
        assert (record["status_to"], record["reason"]) == (str(entry.status_to), entry.reason)
        assert record["duration_ms"] == pytest.approx(entry.duration_ms, abs=1e-3)
        assert record["attempt"] == entry.attempt
    assert lifecycle[2]["reason"] == "claimed"
    assert lifecycle[2]["worker_id"] == "w-log"
    assert lifecycle[3]["reason"] == job.reason
    assert lifecycle[3]["level"] == "error"
    assert lifecycle[3]["error_category"] == "module"


async def test_each_module_has_a_spawn_and_a_finish_record(records: dict[str, Any]) -> None:
    job = records["job"]
    all_records = records["records"]
    for module in MODULES:
        spawns = having(all_records, event="job.module.spawn", module=module)
        assert len(spawns) == 1, module
        finish_event = "job.module.error" if module == "broken" else "job.module.complete"
        finishes = having(all_records, event=finish_event, module=module)
        assert len(finishes) == 1, module
        assert isinstance(finishes[0]["duration_ms"], int | float)
        for record in (*spawns, *finishes):
            assert (record["job_id"], record["project_id"]) == (job.id, "proj-log")
    error = having(all_records, event="job.module.error", module="broken")[0]
    assert (error["outcome"], error["error_category"], error["error"]) == (
        "error",
        "module",
        "cannot parse the lockfile",
    )
    assert not having(all_records, event="job.module.complete", module="broken")


async def test_the_final_fanout_record_counts_every_module(records: dict[str, Any]) -> None:
    job = records["job"]
    fanouts = having(records["records"], event="job.module.fanout")
    assert fanouts
    for record in fanouts:
        assert (record["job_id"], record["project_id"]) == (job.id, "proj-log")
        assert record["total"] == len(MODULES)
    finals = [r for r in fanouts if r["final"]]
    assert len(finals) == 1
    assert fanouts[-1] is finals[0]
    assert (finals[0]["completed"], finals[0]["failed"], finals[0]["cancelled"], finals[0]["total"]) == (
        2,
        1,
        0,
        3,
    )
    progress = [r["completed"] + r["failed"] for r in fanouts[:-1]]
    assert progress == sorted(progress)


async def test_context_fields_reach_records_written_in_module_worker_threads(records: dict[str, Any]) -> None:
    job = records["job"]
    threaded = [r for r in records["records"] if r["logger"] == THREAD_LOGGER]
    assert len(threaded) == 1
    record = threaded[0]
    assert record["thread_name"] != threading.main_thread().name
    assert record["thread_name"] == job.results[MODULES.index("threaded")].summary["thread"]
    assert (record["job_id"], record["project_id"], record["module"]) == (job.id, "proj-log", "threaded")
    assert record["worker_id"] == "w-log"
