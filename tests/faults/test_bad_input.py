"""Bad input everywhere: never a traceback, never a stuck job.

* the CLI (subprocesses on the embedded default): a 10,000-name module list, odd paths
  (missing, a FIFO, /dev/null, newlines and unicode in the name, an empty directory), a
  hostile source tree (symlink loops, a FIFO, a socket, a dangling symlink, binary and
  oversized files, an undecodable file name), malformed ``--traceparent`` values;
* the API: malformed ``traceparent`` headers (the FastAPI instrumentation on) create the
  job and the caller link is ignored;
* a module whose result cannot be stored fails its job (category module) and the worker
  goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider
from telemetry_helpers import FakeModule, ok, run_orchestrator

from faults.helpers import ORCHESTRATOR_CMD, embedded_env, figures
from orchestrator.api.app import create_api
from orchestrator.bootstrap import open_app
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry

MALFORMED_TRACEPARENTS = {
    "garbage": "garbage",
    "short ids": "00-abc-def-01",
    "all-zero trace id": f"00-{'0' * 32}-{'1' * 16}-01",
    "all-zero span id": f"00-{'1' * 32}-{'0' * 16}-01",
    "version ff": f"ff-{'1' * 32}-{'2' * 16}-01",
    "non-hex": f"00-{'g' * 32}-{'2' * 16}-01",
    "extra fields": f"00-{'1' * 32}-{'2' * 16}-01-extra-junk",
    "very long": "00-" + "a" * 500,
    "unicode": "00-ünïcødé-01",
}


#: The slug the CLI derives from the folder "odd\nname ünï 🚀" when no --project-id is given.
ODD_FOLDER_PROJECT_ID = "odd-name-uni"


def expected_errors(tmp_path: Path, fifo: Path) -> dict[str, tuple[str, ...]]:
    """Each refused call and what its one line must say: the flag, the value, and why."""
    return {
        "10,000 modules": ("--modules: ", "at most 64", "10000"),
        "missing path": ("--source: ", str(tmp_path / "nope"), "does not exist"),
        # the newline is not printed as one (the error stays one line), the path still is
        "missing path with a newline": ("--source: ", str(tmp_path), "does not exist"),
        "a FIFO": ("--source: ", str(fifo), "is neither a directory nor a regular file"),
        "/dev/null": ("--source: ", "/dev/null", "pseudo-filesystem"),
        "newline in --project-id": ("--project-id: ", "letters, digits"),
        "empty --modules": ("--modules: ", "no module"),
        "unknown module": ("unknown module 'nope'", "(known: dependencies, inventory, python_syntax, secrets, todos)"),
    }


def one_line_error(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("orchestrator: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def hostile_tree(root: Path) -> Path:
    tree = root / "hostile"
    (tree / "pkg" / "deep" / "er" / "still").mkdir(parents=True)
    (tree / "main.py").write_text("import os\n# TODO: fix\npassword = 'hunter22hunter22'\n")
    (tree / "broken.py").write_text("def f(:\n")
    (tree / "pkg" / "deep" / "er" / "still" / "x.py").write_text("x = 1\n")
    (tree / "binary.bin").write_bytes(os.urandom(4096) + b"\0" * 10)
    (tree / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    with (tree / "huge.txt").open("wb") as fh:  # sparse: 6 MB, over the 5 MB cap
        fh.truncate(6_000_000)
    (tree / "loop_a").symlink_to(tree / "loop_b")
    (tree / "loop_b").symlink_to(tree / "loop_a")
    (tree / "pkg" / "up").symlink_to(tree)  # a directory loop
    (tree / "dangling.py").symlink_to(tree / "missing.py")
    (tree / "unreadable.py").symlink_to("/proc/self/mem/nope")
    os.mkfifo(tree / "fifo.py")  # opening it would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "socket.py"))
    sock.close()
    (tree / "package.json").write_text('{"dependencies": {"left-pad": "1.0.0"}}')
    os.makedirs(os.fsencode(tree) + b"/bad-\xff-name", exist_ok=True)
    (Path(os.fsdecode(os.fsencode(tree) + b"/bad-\xff-name")) / "ok.py").write_text("y = 2\n")
    return tree


def test_the_cli_rejects_or_survives_bad_input_without_a_traceback(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "ORCHESTRATOR_LOG_FORMAT": "json"}
    empty = tmp_path / "empty"
    empty.mkdir()
    odd = tmp_path / "odd\nname ünï 🚀"
    odd.mkdir()
    (odd / "main.py").write_text("print('hi')\n")
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    tree = hostile_tree(tmp_path)
    names = ",".join(f"m{i:05d}" for i in range(10_000))

    calls: dict[str, tuple[str, ...]] = {
        "10,000 modules": ("submit", "--source", str(empty), "--modules", names),
        "missing path": ("submit", "--source", str(tmp_path / "nope")),
        "missing path with a newline": ("submit", "--source", str(tmp_path / "no\npe"), "--project-id", "p"),
        "a FIFO": ("submit", "--source", str(fifo)),
        "/dev/null": ("submit", "--source", "/dev/null"),
        "newline+unicode dir as project id": ("submit", "--source", str(odd), "--json"),
        "newline in --project-id": ("submit", "--source", str(empty), "--project-id", "odd\nname"),
        "empty --modules": ("submit", "--source", str(empty), "--modules", ","),
        "unknown module": ("submit", "--source", str(empty), "--modules", "nope"),
        "empty dir": ("run", "--source", str(empty), "--json"),
        "newline+unicode dir": ("run", "--source", str(odd), "--project-id", "odd", "--json"),
        "hostile tree": ("run", "--source", str(tree), "--project-id", "hostile", "--json"),
    }
    for label, value in MALFORMED_TRACEPARENTS.items():
        calls[f"--traceparent {label}"] = ("submit", "--source", str(empty), "--traceparent", value, "--json")

    def call(args: tuple[str, ...]) -> Any:
        return run_orchestrator(*args, cwd=tmp_path, env=env, timeout=120)

    run_orchestrator("db", "upgrade", cwd=tmp_path, env=env)  # one migration, not a race of many
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(calls, pool.map(call, calls.values()), strict=True))

    outcome: dict[str, str] = {}
    for label, fragments in expected_errors(tmp_path, fifo).items():
        message = one_line_error(results[label])[len("orchestrator: error: ") :]
        outcome[label] = message[:90]
        missing = [f for f in fragments if f not in message]
        assert not missing, (label, message, missing)
    derived = results["newline+unicode dir as project id"]
    assert derived.returncode == 0, derived.stderr[-2000:]
    assert json.loads(derived.stdout)["project_id"] == ODD_FOLDER_PROJECT_ID
    outcome["newline+unicode dir as project id"] = f"created, project id {ODD_FOLDER_PROJECT_ID!r}"
    for label in ("empty dir", "newline+unicode dir", "hostile tree"):
        r = results[label]
        assert r.returncode in (0, 1), (label, r.returncode, r.stderr[-3000:])
        assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
        job = json.loads(r.stdout)
        assert job["status"] in ("completed", "failed"), job
        assert len(job["results"]) == 5, job["results"]
        for result in job["results"]:
            assert result["outcome"] in ("ok", "error"), result
            if result["outcome"] == "error":
                assert result["error"], result
        outcome[label] = f"rc {r.returncode}, {job['status']} in {r.seconds:.1f} s: " + ", ".join(
            f"{x['module']} {x['outcome']}" for x in job["results"]
        )
    hostile = {x["module"]: x for x in json.loads(results["hostile tree"].stdout)["results"]}
    inventory = hostile["inventory"]["summary"]
    outcome["hostile tree inventory"] = f"{inventory['total_files']} regular files, walk {inventory['walk']}"
    malformed: dict[str, str] = {}
    for label in MALFORMED_TRACEPARENTS:
        r = results[f"--traceparent {label}"]
        assert "Traceback" not in r.stderr
        assert r.returncode == 0, (label, r.stderr[-2000:])
        malformed[label] = json.loads(r.stdout)["id"]
        # created, and the user is told the value was ignored (a warning record on stderr)
        warnings = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
        ignored = [w for w in warnings if w.get("event") == "job.traceparent.ignored"]
        assert [(w["level"], w["message"]) for w in ignored] == [("warning", "malformed traceparent ignored")], (
            label,
            r.stderr[-2000:],
        )
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "orchestrator.db")) as db, db:
        links = {
            label: db.execute("SELECT trace_link FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            for label, job_id in malformed.items()
        }
    db.close()
    figures(
        "bad input on the command line",
        {
            **outcome,
            "malformed --traceparent values": f"{len(malformed)} jobs created, links kept: "
            f"{sum(1 for v in links.values() if v)}",
        },
    )
    assert links == dict.fromkeys(malformed), links
    # 8 regular files; links, the loop, the FIFO and the socket are not followed or opened
    assert inventory["total_files"] == 8, inventory
    assert inventory["walk"]["skipped_binary"] >= 1, inventory


@pytest.mark.anyio
async def test_the_api_ignores_malformed_traceparent_headers(tmp_path: Path) -> None:
    source = tmp_path / "project"
    source.mkdir()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(data_dir=tmp_path / "data", load_entry_points=False, source_roots=(tmp_path,))
    registry = ModuleRegistry([FakeModule("quick", ok())])
    telemetry = JobTelemetry(NoOpTracerProvider())
    created: dict[str, Any] = {}
    async with open_app(settings, registry=registry, telemetry=telemetry) as app:
        api = create_api(app)
        FastAPIInstrumentor.instrument_app(api, tracer_provider=provider, excluded_urls="healthz,readyz")
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            valid_trace = "1" * 31 + "2"
            headers = {**MALFORMED_TRACEPARENTS, "valid (control)": f"00-{valid_trace}-{'3' * 16}-01"}
            for label, value in headers.items():
                body = {"project_id": "tp", "source": str(source), "modules": ["quick"]}
                try:
                    response = await client.post("/v1/jobs", json=body, headers={"traceparent": value})
                except UnicodeEncodeError:
                    created[label] = "not sendable as an HTTP header"
                    continue
                assert response.status_code == 201, (label, response.text)
                job = await app.store.get(response.json()["id"])
                created[label] = job.trace.link
        FastAPIInstrumentor.uninstrument_app(api)
    provider.shutdown()
    figures("malformed traceparent headers on POST /v1/jobs", {k: str(v)[:70] for k, v in created.items()})
    control = created.pop("valid (control)")
    assert control is not None
    assert control.split("-")[1] == valid_trace, "a valid caller is linked"
    for label, link in created.items():
        if link == "not sendable as an HTTP header":
            continue
        # The request span starts a trace of its own; the malformed value leaves no trace.
        assert link is None or link.split("-")[1] != valid_trace, label
        assert link is None or MALFORMED_TRACEPARENTS[label] not in link, label


def test_a_module_result_is_stored_canonical_or_fails_the_module_and_the_worker_goes_on(
    tmp_path: Path, fault_plugin_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    source = tmp_path / "project"
    source.mkdir()
    env = embedded_env(data_dir, fault_plugin_dir, poll_seconds=0.05, webhooks="false")
    log_path = tmp_path / "worker.log"
    kinds = ["object", "nan", "list", "huge", "cycle", "bytes"]
    ids: dict[str, str] = {}
    for kind in kinds:
        done = subprocess.run(
            [*ORCHESTRATOR_CMD, "submit", "--source", str(source), "--modules", "unserialisable", "--json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        ids[kind] = json.loads(done.stdout)["id"]
    # module options are not a CLI flag: set them in the database before the worker starts
    with contextlib.closing(sqlite3.connect(data_dir / "orchestrator.db")) as db, db:
        for kind, job_id in ids.items():
            options = {"failure_policy": "complete_all", "module_options": {"unserialisable": {"kind": kind}}}
            db.execute("UPDATE jobs SET options = ? WHERE id = ?", (json.dumps(options), job_id))
    db.close()
    done = subprocess.run(
        [*ORCHESTRATOR_CMD, "submit", "--source", str(source), "--modules", "noop", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    ids["noop afterwards"] = json.loads(done.stdout)["id"]
    with log_path.open("wb") as log:
        worker = subprocess.Popen([*ORCHESTRATOR_CMD, "worker"], env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.closing(sqlite3.connect(data_dir / "orchestrator.db")) as db, db:
                rows = {r[0]: r[1:] for r in db.execute("SELECT id, status, error_category, reason FROM jobs")}
            db.close()
            if all(rows[i][0] in ("completed", "failed", "cancelled") for i in ids.values()):
                break
            assert worker.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        alive = worker.poll() is None
        worker.terminate()
        rc = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log_path.read_text()
    figures(
        "module results that cannot be stored",
        {kind: f"{rows[i][0]} ({rows[i][1]}): {(rows[i][2] or '')[:80]}" for kind, i in ids.items()},
    )
    assert alive
    assert rc == 0
    assert "Traceback" not in output, output[-3000:]
    # What the store's canonical form can hold is kept (NaN as the string "NaN", a cycle cut
    # at 64 levels); what is not JSON at all is the module's error. The worker goes on.
    expected = {
        "object": ("failed", "module"),
        "nan": ("completed", None),
        "list": ("failed", "module"),
        "huge": ("failed", "module"),
        "cycle": ("completed", None),
        "bytes": ("failed", "module"),
    }
    assert {kind: rows[ids[kind]][:2] for kind in kinds} == expected
    assert rows[ids["noop afterwards"]][0] == "completed"
