"""Nothing a job meets can poison the store (issue 12), on both stores.

Values a job stores (module summaries, file names, options, reasons) go in through one
canonical form and come back equal to it through the store, the API and the CLI; client
input that cannot be stored is a 422 naming the field before anything is written; an
unreadable row never breaks a read; a cancel answered "flagged" means Cancelled.

The canonical form is written out below as an independent statement of the README's rules
(``expected``), not read from the code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import psycopg
import pytest
from api_helpers import api_client, open_backend_app, running_worker
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from telemetry_helpers import FakeModule, ok

from orchestrator.api.app import create_api
from orchestrator.bootstrap import App
from orchestrator.domain import (
    IllegalTransition,
    Job,
    JobStatus,
    PersistenceError,
)
from orchestrator.modules.base import ModuleContext
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.serialization import job_json
from orchestrator.usecases.execute import JobControl

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# -- the canonical form, stated independently ---------------------------------------------


def expected(value: Any) -> Any:
    """What a stored value reads back as (README: "What is stored")."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value == 0:
            return 0.0
        if abs(value) >= 1e16 and value == int(value):
            return int(value)
        return value
    if isinstance(value, str):
        out = []
        for char in value:
            code = ord(char)
            if code == 0:
                out.append("\\x00")
            elif 0xDC80 <= code <= 0xDCFF:
                out.append(f"\\x{code - 0xDC00:02x}")
            elif 0xD800 <= code <= 0xDFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(char)
        return "".join(out)
    if isinstance(value, dict):
        return {expected(k): expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected(v) for v in value]
    raise TypeError(type(value))


def collides(value: Any) -> bool:
    """Two keys of one object with the same canonical form (``"\\x00"`` and a NUL)."""
    if isinstance(value, dict):
        keys = [expected(k) for k in value]
        return len(set(keys)) != len(keys) or any(collides(v) for v in value.values())
    if isinstance(value, list):
        return any(collides(v) for v in value)
    return False


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=24,
)

# -- a module that returns what the test asks ---------------------------------------------

RETURNS: dict[str, Any] = {}


async def echo(context: ModuleContext) -> Mapping[str, Any]:
    return {"value": RETURNS[context.project_id]}


def registry() -> ModuleRegistry:
    return ModuleRegistry([FakeModule("echo", echo), FakeModule("quick", ok())])


Driven = tuple[anyio.from_thread.BlockingPortal, App]


def postgres_of(request: pytest.FixtureRequest, backend: str) -> dict[str, Any]:
    if backend != "postgres":
        return {}
    return {"postgres_url": request.getfixturevalue("postgres_url"), "pg_schema": request.getfixturevalue("pg_schema")}


@pytest.fixture(params=BACKENDS)
def backend_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driven]:
    """An opened App (SQLite file or a fresh PostgreSQL schema) driven from a sync test."""
    pg = postgres_of(request, request.param)
    (tmp_path / "src").mkdir()
    with anyio.from_thread.start_blocking_portal() as portal:
        opened = open_backend_app(request.param, tmp_path, registry=registry(), **pg)
        with portal.wrap_async_context_manager(opened) as app:
            yield portal, app


async def run_echo(app: App, project_id: str, source: Path) -> Job:
    job = await app.create.execute({"project_id": project_id, "source": str(source), "modules": ["echo"]})
    running = await app.workflow.claim("w1", lease_seconds=30)
    assert running is not None
    assert running.id == job.id
    return await app.execute.execute(running, control=JobControl(), worker_id="w1")


async def read_via_api(app: App, path: str) -> httpx.Response:
    async with api_client(create_api(app)) as client:
        return await client.get(path)


# -- module output round-trips ------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES)
def test_any_module_output_round_trips_in_canonical_form_through_store_and_api(
    backend_app: Driven, tmp_path: Path, value: Any
) -> None:
    assume(not collides(value))
    portal, app = backend_app
    project = f"p{uuid.uuid4().hex[:12]}"
    RETURNS[project] = value
    final = portal.call(run_echo, app, project, tmp_path / "src")

    assert (final.status, final.error_category) == (JobStatus.COMPLETED, None), final.reason
    want = {"value": expected(value)}
    assert portal.call(app.store.get, final.id).results[0].summary == want
    listed = portal.call(lambda: app.store.list_jobs(project_id=project))
    assert [j.results[0].summary for j in listed] == [want]
    response = portal.call(read_via_api, app, f"/v1/jobs/{final.id}")
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["summary"] == want
    page = portal.call(read_via_api, app, f"/v1/jobs?project_id={project}")
    assert page.status_code == 200, page.text


def test_nesting_deeper_than_the_limit_is_cut_with_a_marker(backend_app: Driven, tmp_path: Path) -> None:
    portal, app = backend_app
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    RETURNS["deep"] = deep
    final = portal.call(run_echo, app, "deep", tmp_path / "src")
    assert final.status is JobStatus.COMPLETED
    stored = portal.call(app.store.get, final.id).results[0].summary["value"]
    depth = 1  # the summary object itself is level 0, "value" level 1
    while isinstance(stored, list):
        stored, depth = stored[0], depth + 1
    assert (stored, depth) == ("<truncated: nested deeper than 64 levels>", 64)


# -- client input: stored as given, or a 422 naming the field -----------------------------

_CLIENT_REFUSED = "options.module_options"


def storable_as_given(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return bool(expected(value) == value)
    if isinstance(value, dict):
        return depth < 32 and all(storable_as_given(k) and storable_as_given(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < 32 and all(storable_as_given(v, depth + 1) for v in value)
    return True


async def create_via_api(app: App, body: bytes) -> httpx.Response:
    async with api_client(create_api(app)) as client:
        return await client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3))
def test_client_options_are_stored_as_given_or_refused_with_a_422_naming_the_field(
    backend_app: Driven, tmp_path: Path, value: dict[str, Any]
) -> None:
    portal, app = backend_app
    project = f"c{uuid.uuid4().hex[:12]}"
    body = json.dumps(
        {
            "project_id": project,
            "source": str(tmp_path / "src"),
            "modules": ["quick"],
            "options": {"module_options": {"quick": value}},
        },
        allow_nan=True,
    ).encode("utf-8", "surrogatepass")
    response = portal.call(create_via_api, app, body)

    assert response.status_code in (201, 422), response.text
    stored = portal.call(lambda: app.store.list_jobs(project_id=project))
    if response.status_code == 422:
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert (error["field"] or "").startswith(_CLIENT_REFUSED), error
        assert stored == []  # refused before anything was written
        assert not storable_as_given(value)
    else:
        assert storable_as_given(value)
        [job] = stored
        assert job.options.module_options == {"quick": value}


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"x": float("nan")}, "options.module_options.quick.x", "NaN and infinities are refused"),
        ({"x": "a\x00b"}, "options.module_options.quick.x", "contains a NUL character"),
        ({"x": "\ud800"}, "options.module_options.quick.x", "lone surrogate"),
        (json.loads("[" * 40 + "]" * 40), "options.module_options.quick", "nested deeper than 32 levels"),
    ],
    ids=["nan", "nul", "surrogate", "deep"],
)
def test_unstorable_client_values_are_a_422_that_names_the_field(
    backend_app: Driven, tmp_path: Path, options: Any, field: str, message: str
) -> None:
    portal, app = backend_app
    value = options if isinstance(options, dict) else {"x": options}
    body = json.dumps(
        {
            "project_id": "bad",
            "source": str(tmp_path / "src"),
            "modules": ["quick"],
            "options": {"module_options": {"quick": value}},
        },
        allow_nan=True,
    ).encode("utf-8", "surrogatepass")
    response = portal.call(create_via_api, app, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field), error
    assert message in error["message"], error
    assert portal.call(lambda: app.store.list_jobs(project_id="bad")) == []


@pytest.mark.parametrize("query", ["cursor=%00", "cursor=%ED%A0%80", "project_id=a%00b", "project_id=%ED%A0%80"])
def test_odd_query_parameters_are_a_422_never_store_unavailable(backend_app: Driven, query: str) -> None:
    portal, app = backend_app
    response = portal.call(read_via_api, app, f"/v1/jobs?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == query.split("=")[0]


@pytest.mark.parametrize("job_id", ["%00", "%ED%A0%80", "a%00b"])
def test_odd_job_ids_are_not_found_never_store_unavailable(backend_app: Driven, job_id: str) -> None:
    portal, app = backend_app
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"):
        response = portal.call(read_via_api, app, path)
        assert response.status_code in (404, 422), (path, response.text)


# -- file names that are not UTF-8 --------------------------------------------------------

BYTE_NAMES = st.lists(
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")),
    min_size=1,
    max_size=4,
    unique=True,
)


async def run_syntax(app: App, project_id: str, source: Path) -> Job:
    job = await app.create.execute({"project_id": project_id, "source": str(source), "modules": ["python_syntax"]})
    running = await app.workflow.claim("w1", lease_seconds=30)
    assert running is not None
    assert running.id == job.id
    return await app.execute.execute(running, control=JobControl(), worker_id="w1")


@pytest.fixture(params=BACKENDS)
def builtin_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driven]:
    pg = postgres_of(request, request.param)
    with anyio.from_thread.start_blocking_portal() as portal:
        opened = open_backend_app(request.param, tmp_path, registry=ModuleRegistry.default(entry_points=False), **pg)
        with portal.wrap_async_context_manager(opened) as app:
            yield portal, app


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=BYTE_NAMES)
def test_file_names_of_any_bytes_are_stored_escaped_and_lossless(
    builtin_app: Driven, tmp_path: Path, names: list[bytes]
) -> None:
    portal, app = builtin_app
    source = tmp_path / f"tree{uuid.uuid4().hex[:12]}"
    source.mkdir()
    for name in names:
        with open(os.fsencode(source) + b"/" + name + b".py", "wb") as handle:
            handle.write(b"def broken(:\n")  # a syntax error: python_syntax reports the file by name
    final = portal.call(run_syntax, app, source.name, source)

    assert final.status is JobStatus.COMPLETED, final.reason
    reported = sorted(e["path"] for e in final.results[0].summary["errors"])
    assert reported == sorted(expected(os.fsdecode(name + b".py")) for name in names)
    response = portal.call(read_via_api, app, f"/v1/jobs/{final.id}")
    assert response.status_code == 200, response.text
    assert sorted(e["path"] for e in response.json()["results"][0]["summary"]["errors"]) == reported


# -- the tree from the issue, end to end --------------------------------------------------

SECRET = "ghp_" + "R4nd0mT0k3nV4lu3" * 2 + "abcd"


def hostile_tree(root: Path) -> Path:
    tree = root / "hostile"
    tree.mkdir()
    with open(os.fsencode(tree) + b"/bad\xff.py", "wb") as handle:
        handle.write(b"print('not utf-8 name')\n")
    (tree / "notes.py").write_bytes(b"# filler\n" * 1024 + b"# TODO: fix \x00 here\n")  # a NUL after 8 KiB
    (tree / "deploy.py").write_text(f'# TODO rotate the token {SECRET}\nTOKEN = "{SECRET}"\n')
    (tree / "pyproject.toml").write_text('[project]\nname = "hostile"\ndependencies = ["httpx"]\n')
    return tree


def test_a_hostile_tree_completes_with_all_results_and_no_secret_in_reasons_or_payloads(
    builtin_app: Driven, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    portal, app = builtin_app
    tree = hostile_tree(tmp_path)

    async def scenario() -> Job:
        from orchestrator.webhooks.models import Subscription
        from orchestrator.webhooks.store import webhook_store

        await webhook_store(app.store).add_subscription(
            Subscription(
                "hook",
                "hostile",
                "https://hooks.example.com/x",
                "s" * 20,
                ("job.lifecycle.enqueue", "job.lifecycle.start", "job.lifecycle.complete", "job.lifecycle.fail"),
                1,
            )
        )
        await app.create.execute({"project_id": "hostile", "source": str(tree)})
        running = await app.workflow.claim("w1", lease_seconds=30)
        assert running is not None
        return await app.execute.execute(running, control=JobControl(), worker_id="w1")

    final = portal.call(scenario)
    assert final.status is JobStatus.COMPLETED, final.reason
    assert [r.outcome for r in final.results] == ["ok"] * len(final.modules)
    assert len(final.results) == 5

    async def payloads() -> list[dict[str, Any]]:
        from orchestrator.webhooks.store import webhook_store

        return [dict(d.payload) for d in await webhook_store(app.store).list_deliveries(job_id=final.id)]

    sent = portal.call(payloads)
    assert [p["event"] for p in sent] == ["job.lifecycle.enqueue", "job.lifecycle.start", "job.lifecycle.complete"]
    history = portal.call(app.store.history, final.id)
    # The database's address as a message or URL would quote it (a bare "5432" turns up in
    # a timestamp's microseconds or an id about once in a few hundred runs).
    forbidden = [SECRET, "127.0.0.1", ":5432", "port 5432"]
    records = [r.getMessage() for r in caplog.records]
    for text in [final.reason or "", *(e.reason for e in history), json.dumps(sent), *records]:
        for word in forbidden:
            assert word not in text, (word, text[:200])
    names = json.dumps([r.summary for r in final.results])
    assert "bad\\\\xff.py" in names  # the undecodable byte, shown as an escape


# -- a finalize that fails to persist names no data ---------------------------------------


class _RefusingStore:
    """A store whose terminal write fails once with a driver message quoting data (a fake, for
    one unit: what a database's error context carried before issue 12)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.refused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply_with_history(self, transition: Any) -> Any:
        if transition.status_to is JobStatus.COMPLETED and not self.refused:
            self.refused = True
            raise PersistenceError(f'invalid input: "{SECRET}" at db.internal:5432/prod', error_id="e1e1e1e1")
        return await self._inner.apply_with_history(transition)

    async def apply(self, transition: Any) -> Any:
        return await self._inner.apply(transition)


def test_a_finalize_that_cannot_persist_fails_with_a_reason_naming_no_data(backend_app: Driven, tmp_path: Path) -> None:
    portal, app = backend_app
    RETURNS["refused"] = {"ok": True}
    refusing = _RefusingStore(app.store)
    app.workflow.store = refusing  # type: ignore[assignment]
    try:
        final = portal.call(run_echo, app, "refused", tmp_path / "src")
    finally:
        app.workflow.store = refusing._inner
    assert final.status is JobStatus.FAILED
    assert final.reason == "finalize failed: the results could not be stored (persistence error, error id e1e1e1e1)"
    assert SECRET not in json.dumps([r.summary for r in final.results])


# -- damaged rows -------------------------------------------------------------------------


def json_of(job_id: str, portal: Any, app: App) -> dict[str, Any]:
    """The job as GET /v1/jobs/{id} gives it, checked against the form `status --json`
    prints (both read every field, the results' overrun included)."""
    response = portal.call(read_via_api, app, f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    as_printed = job_json(portal.call(app.store.get, job_id))
    assert (as_printed["id"], as_printed["damaged"]) == (job_id, response.json()["damaged"])
    return dict(response.json())


def damage(app: App, job: Job, tmp_path: Path, request: pytest.FixtureRequest, how: str) -> None:
    """Write a results value no version of ours writes now: valid JSON of the wrong shape,
    or the stored form of a NaN expected runtime (a module could declare one, and every
    read of its jobs then failed, status, report and GET /v1/jobs included)."""
    if how == "nan":
        value = json.dumps([{**r.to_json(), "expected_ms": "NaN"} for r in job.results])
    else:
        value = '{"not": "a list"}' if app.store.backend == "sqlite" else '[{"module": 7}]'
    if app.store.backend == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "orchestrator.db")) as conn, conn:
            conn.execute("UPDATE jobs SET results = ? WHERE id = ?", (value, job.id))
        return
    url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("UPDATE jobs SET results = %s::jsonb WHERE id = %s", (value, job.id))


@pytest.mark.parametrize("how", ["shape", "nan"])
def test_a_damaged_row_is_listed_as_damaged_and_can_be_deleted(
    backend_app: Driven, tmp_path: Path, request: pytest.FixtureRequest, how: str
) -> None:
    portal, app = backend_app
    RETURNS["dmg"] = {"ok": True}
    final = portal.call(run_echo, app, "dmg", tmp_path / "src")
    assert final.results
    damage(app, final, tmp_path, request, how)
    assert json_of(final.id, portal, app)["damaged"] == "unreadable stored fields: results"

    [listed] = portal.call(lambda: app.store.list_jobs(project_id="dmg"))
    assert (listed.id, listed.damaged, listed.results) == (final.id, "unreadable stored fields: results", ())
    response = portal.call(read_via_api, app, "/v1/jobs?project_id=dmg")
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["damaged"] == "unreadable stored fields: results"

    async def delete() -> httpx.Response:
        async with api_client(create_api(app)) as client:
            return await client.delete(f"/v1/jobs/{final.id}")

    assert portal.call(delete).status_code == 204
    assert portal.call(lambda: app.store.list_jobs(project_id="dmg")) == []
    assert portal.call(app.store.history, final.id) == []


# -- the cancel guarantee -----------------------------------------------------------------


async def short(context: ModuleContext) -> Mapping[str, Any]:
    await anyio.sleep(random.uniform(0.1, 0.4))
    return {"done": True}


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_flagged_cancel_always_ends_cancelled_even_racing_the_finish(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = postgres_of(request, backend)
    (tmp_path / "src").mkdir()
    reg = ModuleRegistry([FakeModule("short", short)])
    async with (
        open_backend_app(backend, tmp_path, registry=reg, **pg) as app,
        running_worker(app, concurrency=8) as worker,
    ):
        jobs = [
            await app.create.execute({"project_id": "race", "source": str(tmp_path / "src"), "modules": ["short"]})
            for _ in range(60)
        ]
        answers: dict[str, JobStatus | None] = {}
        seen_running: set[str] = set()

        async def cancel_soon(job: Job) -> None:
            # Wait (in memory, not polling the store) until the worker runs it, then ask for
            # its cancellation somewhere in its module's run, or just after it.
            with anyio.move_on_after(20):
                while job.id not in worker.in_flight:
                    await anyio.sleep(0.001)
                seen_running.add(job.id)
            await anyio.sleep(random.uniform(0, 0.4))
            try:
                answers[job.id] = (await app.workflow.cancel(job.id, reason="race", requested_by="test")).status
            except IllegalTransition:
                answers[job.id] = None  # it had finished before the request

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(cancel_soon, job)

        async def all_terminal() -> list[Job]:
            found = await app.store.list_jobs(project_id="race", limit=500)
            return found if all(j.status.terminal for j in found) else []

        with anyio.fail_after(30):
            while not (final := await all_terminal()):
                await anyio.sleep(0.02)

    by_id = {j.id: j for j in final}
    flagged = [job_id for job_id, answer in answers.items() if answer is JobStatus.RUNNING]
    finished_first = [job_id for job_id, answer in answers.items() if answer is None]
    assert len(flagged) >= 5, f"the race caught too few running jobs to prove anything: {Counter(answers.values())}"
    assert [j for j in flagged if by_id[j].status is not JobStatus.CANCELLED] == []
    assert all(by_id[j].status is JobStatus.COMPLETED for j in finished_first)
    for job_id in flagged:
        assert by_id[job_id].reason == "race"
        assert [r.outcome for r in by_id[job_id].results] in (["ok"], ["cancelled"])  # computed results are kept


# -- the CLI reads the same canonical values ----------------------------------------------


def test_the_cli_json_shows_the_canonical_form(tmp_path: Path) -> None:
    tree = tmp_path / "cli"
    tree.mkdir()
    with open(os.fsencode(tree) + b"/odd\xfe.py", "wb") as handle:
        handle.write(b"def broken(:\n")
    env = {**os.environ, "ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "OTEL_SDK_DISABLED": "true"}
    env.pop("ORCHESTRATOR_DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--source", str(tree), "--modules", "python_syntax", "--json"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()
    job = json.loads(run.stdout)
    status = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", job["id"], "--json"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr.decode()
    again = json.loads(status.stdout)
    assert [e["path"] for e in again["results"][0]["summary"]["errors"]] == ["odd\\xfe.py"]
    assert again["results"] == job["results"]


# -- found in the audit of issue 12 -------------------------------------------------------


# SQLite only: PostgreSQL text is always valid UTF-8 (the server refuses anything else).
@pytest.mark.parametrize("backend_app", ["sqlite"], indirect=True)
def test_text_sqlite_holds_that_is_not_utf8_marks_the_job_damaged_and_never_breaks_a_read(
    backend_app: Driven, tmp_path: Path
) -> None:
    """Another tool (or a damaged file) wrote bytes that are not UTF-8 into text columns:
    the listing, the job, its history and the API still answer, the job is reported
    damaged with the columns named, and it can be deleted."""
    portal, app = backend_app
    assert app.store.backend == "sqlite"
    RETURNS["utf8"] = {"ok": True}
    final = portal.call(run_echo, app, "utf8", tmp_path / "src")
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "orchestrator.db")) as conn, conn:
        conn.execute(
            "UPDATE jobs SET reason = CAST(x'6f6bff' AS TEXT), source = CAST(x'2fff' AS TEXT) WHERE id = ?", (final.id,)
        )
        conn.execute("UPDATE job_history SET reason = CAST(x'6f6bff' AS TEXT) WHERE job_id = ?", (final.id,))

    [listed] = portal.call(lambda: app.store.list_jobs(project_id="utf8"))
    assert (listed.id, listed.damaged) == (final.id, "unreadable stored fields: source, reason")
    assert (listed.reason, listed.source) == ("ok\ufffd", "/\ufffd")
    assert {e.reason for e in portal.call(app.store.history, final.id)} == {"ok\ufffd"}
    for path in ("/v1/jobs?project_id=utf8", f"/v1/jobs/{final.id}", f"/v1/jobs/{final.id}/events"):
        response = portal.call(read_via_api, app, path)
        assert response.status_code == 200, (path, response.text)

    async def delete() -> httpx.Response:
        async with api_client(create_api(app)) as client:
            return await client.delete(f"/v1/jobs/{final.id}")

    assert portal.call(delete).status_code == 204
    assert portal.call(lambda: app.store.list_jobs(project_id="utf8")) == []


def test_a_cancel_reason_with_a_nul_is_a_422_naming_the_field_and_records_nothing(
    backend_app: Driven, tmp_path: Path
) -> None:
    portal, app = backend_app
    job = portal.call(
        lambda: app.create.execute({"project_id": "nulreason", "source": str(tmp_path / "src"), "modules": ["quick"]})
    )

    async def cancel() -> httpx.Response:
        async with api_client(create_api(app)) as client:
            return await client.post(f"/v1/jobs/{job.id}/cancel?reason=a%00b")

    response = portal.call(cancel)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "reason"
    assert response.json()["error"]["message"] == "reason: contains a NUL character"
    assert portal.call(app.store.get, job.id).status is JobStatus.QUEUED


@pytest.mark.parametrize("secret", ["s" * 20 + "\x00", "\x00" + "s" * 20])
def test_a_webhook_secret_that_cannot_be_stored_is_a_422_naming_the_field(backend_app: Driven, secret: str) -> None:
    """A NUL in the signing secret: SQLite would keep it, PostgreSQL refuses it (it was a
    503 "store unavailable" there). Both refuse it as bad input, and store nothing."""
    portal, app = backend_app

    async def subscribe() -> httpx.Response:
        body = {"project_id": "hooked", "url": "http://127.0.0.1:9/hook", "secret": secret}
        async with api_client(create_api(app, webhook_allow_private=True)) as client:
            return await client.post("/v1/webhooks", json=body)

    response = portal.call(subscribe)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "secret"
    assert "NUL" in response.json()["error"]["message"]
    assert secret.strip("\x00") not in response.text

    async def stored() -> list[Any]:
        from orchestrator.webhooks.store import webhook_store

        return await webhook_store(app.store).list_subscriptions(project_id="hooked")

    assert portal.call(stored) == []


def test_a_cli_webhook_secret_that_is_not_utf8_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"),
        "OTEL_SDK_DISABLED": "true",
        "ORCHESTRATOR_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    env.pop("ORCHESTRATOR_DATABASE_URL", None)
    secret = b"s" * 20 + b"\xff"
    add = ["webhooks", "add", "--project-id", "p", "--url", "http://127.0.0.1:9/h", "--secret", os.fsdecode(secret)]
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", *add],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert run.stderr.decode(errors="replace").strip().splitlines() == [
        "orchestrator: error: secret: contains a lone surrogate (not valid Unicode)"
    ]


# -- retention ----------------------------------------------------------------------------


def test_prune_deletes_finished_jobs_before_the_cutoff_with_everything_of_theirs_and_nothing_else(
    backend_app: Driven, tmp_path: Path
) -> None:
    from orchestrator.usecases.prune import PruneReport, PruneUseCase
    from orchestrator.webhooks.models import Subscription
    from orchestrator.webhooks.store import webhook_store

    portal, app = backend_app
    hooks = webhook_store(app.store)
    subscription = Subscription("h1", "old", "https://hooks.example.com/x", "s" * 20, ("job.lifecycle.complete",), 1)
    portal.call(hooks.add_subscription, subscription)
    RETURNS["old"] = {"ok": True}
    finished = portal.call(run_echo, app, "old", tmp_path / "src")
    waiting = portal.call(
        lambda: app.create.execute({"project_id": "old", "source": str(tmp_path / "src"), "modules": ["quick"]})
    )
    assert finished.finished_ns is not None
    telemetry = tmp_path / "telemetry"
    telemetry.mkdir()
    # the active files, two backups, and files that are not ours (an editor's, a copy)
    for name in ("traces.jsonl", "traces.jsonl.1", "logs.jsonl.2", "traces.jsonl.orig", "logs.jsonl.2.bak"):
        (telemetry / name).write_text("{}\n")
        os.utime(telemetry / name, (1, 1))  # written long ago
    prune = PruneUseCase(app.store, telemetry_dir=telemetry)

    assert portal.call(lambda: prune.execute(before_ns=finished.finished_ns)) == PruneReport(0, 2, 6, False)
    (telemetry / "traces.jsonl.1").write_text("{}\n")
    os.utime(telemetry / "traces.jsonl.1", (1, 1))
    cutoff = finished.finished_ns + 1
    assert portal.call(lambda: prune.execute(before_ns=cutoff, dry_run=True)) == PruneReport(1, 1, 3, True)
    assert len(portal.call(lambda: app.store.list_jobs(project_id="old"))) == 2
    assert portal.call(lambda: prune.execute(before_ns=cutoff)) == PruneReport(1, 1, 3, False)

    assert [j.id for j in portal.call(lambda: app.store.list_jobs(project_id="old"))] == [waiting.id]
    assert portal.call(app.store.history, finished.id) == []
    assert portal.call(lambda: hooks.list_deliveries(job_id=finished.id)) == []
    # the active file stays, and what is not a backup of ours is not deleted
    assert sorted(p.name for p in telemetry.iterdir()) == ["logs.jsonl.2.bak", "traces.jsonl", "traces.jsonl.orig"]


@pytest.mark.parametrize("age", ["99999999999d", "1" + "0" * 400 + "d"])
def test_prune_with_an_age_older_than_the_epoch_deletes_nothing_and_says_so(tmp_path: Path, age: str) -> None:
    env = {**os.environ, "ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "OTEL_SDK_DISABLED": "true"}
    env.pop("ORCHESTRATOR_DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "prune", "--older-than", age],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().startswith(f"deleted 0 finished jobs older than {age} "), run.stdout.decode()
