"""No secret leaks into telemetry or logs.

Secrets are present in the API token, a webhook subscription's secret, the database
URL's password, module options, and the OTLP exporter headers. An ``orchestrator
serve`` process and an ``orchestrator worker`` process (both at debug level, exporting
everything over OTLP to a local receiver) run jobs created through the API, deliver
webhooks to a local receiver, fail a module and cancel a job; a CLI command fails to
reach the database. Everything exported (spans, events, links, log records, metrics,
decoded from protobuf and searched as text and as bytes), every line the processes
wrote and every webhook request are searched for each secret value. (Module options are
returned by the job API to authorised clients: that is not telemetry.)
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import text_format
from otlp_receiver import OtlpHttpReceiver
from pg_helpers import fresh_database
from webhook_receiver import receiver

from faults.helpers import ORCHESTRATOR_CMD, embedded_env, figures

SECRETS = {
    "api token": "apitok-7Qm2-SECRET-9f8e7d6c5b4a",
    "webhook secret": "whsec-SECRET-4b3c2d1e0f9a8b7c",
    "database password": "S3cretPassw0rd-XYZ",
    "module option": "sk_live_SECRET_51HxYzAbCdEfGh",
    "otlp header token": "otlptok-SECRET-0a1b2c3d4e5f",
}
PROJECT = "secrets-scan-project"  # not a secret: the positive control of the scan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
def test_no_secret_reaches_exported_telemetry_or_logs(
    postgres_url: str, fault_plugin_dir: Path, tmp_path: Path
) -> None:
    with fresh_database(postgres_url) as db_url, OtlpHttpReceiver() as otlp, receiver() as hooks:
        secret_url = db_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRETS['database password']}@")
        assert SECRETS["database password"] in secret_url
        port = free_port()
        env = embedded_env(
            tmp_path / "data",
            fault_plugin_dir,
            database_url=secret_url,
            api_token=SECRETS["api token"],
            webhook_allow_private="true",
            source_roots=str(tmp_path),
            webhook_backoff_seconds=0.2,
            log_level="debug",
            poll_seconds=0.2,
            cancel_poll_seconds=0.2,
        )
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
                "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRETS['otlp header token']}",
                "OTEL_PYTHON_LOG_LEVEL": "debug",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_BLRP_SCHEDULE_DELAY": "100",
                "OTEL_METRIC_EXPORT_INTERVAL": "500",
            }
        )
        logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        commands = {
            "serve": [*ORCHESTRATOR_CMD, "serve", "--port", str(port), "--workers-in-process", "0"],
            "worker": [*ORCHESTRATOR_CMD, "worker"],
        }
        try:
            for name in ("serve", "worker"):
                with logs[name].open("wb") as log:
                    procs[name] = subprocess.Popen(commands[name], env=env, cwd=tmp_path, stdout=log, stderr=log)
                if name == "serve":  # it migrates the database first
                    _wait_http(f"http://127.0.0.1:{port}/healthz", procs["serve"], logs["serve"])
            headers = {"authorization": f"Bearer {SECRETS['api token']}"}
            source = tmp_path / "project"
            source.mkdir()
            # the built-in secrets module scans a file holding a secret too (its findings are redacted)
            (source / "config.py").write_text(f'password = "{SECRETS["module option"]}"\n')
            job_ids = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as api:
                r = api.post(
                    "/v1/webhooks", json={"project_id": PROJECT, "url": hooks.url, "secret": SECRETS["webhook secret"]}
                )
                assert r.status_code == 201, r.text
                assert SECRETS["webhook secret"] not in r.text
                options = {"api_key": SECRETS["module option"], "nested": {"token": SECRETS["module option"]}}
                bodies = [
                    {"modules": ["noop", "secrets"], "options": {"module_options": {"noop": options}}},
                    {"modules": ["flaky"], "options": {"module_options": {"flaky": {"mode": "error", **options}}}},
                    {"modules": ["flaky"], "options": {"module_options": {"flaky": {"mode": "panic", **options}}}},
                    {"modules": ["flaky"], "options": {"module_options": {"flaky": {"mode": "sleep", "seconds": 20}}}},
                ]
                for body in bodies:
                    r = api.post("/v1/jobs", json={"project_id": PROJECT, "source": str(source), **body})
                    assert r.status_code == 201, r.text
                    job_ids.append(r.json()["id"])
                # errors too: a wrong token, an unknown job, a duplicate module list
                assert api.get("/v1/jobs", headers={"authorization": "Bearer wrong"}).status_code == 401
                assert api.get("/v1/jobs/nope").status_code == 404
                bad = {"project_id": PROJECT, "source": str(source), "modules": ["noop", "noop"]}
                assert api.post("/v1/jobs", json=bad).status_code == 422
                _wait(lambda: api.get(f"/v1/jobs/{job_ids[-1]}").json()["status"] == "running", "the sleeper to run")
                assert api.post(f"/v1/jobs/{job_ids[-1]}/cancel").status_code == 202
                _wait(
                    lambda: all(
                        api.get(f"/v1/jobs/{i}").json()["status"] in ("completed", "failed", "cancelled")
                        for i in job_ids
                    ),
                    "every job to finish",
                )
                statuses = Counter(api.get(f"/v1/jobs/{i}").json()["status"] for i in job_ids)
            # enqueue, start and terminal of each job at least
            hooks.wait_for(3 * len(job_ids), timeout=30)
            # A CLI command that cannot reach the database (the password in its URL).
            unreachable = secret_url.replace(":5432/", ":1/")
            cli = subprocess.run(
                [*ORCHESTRATOR_CMD, "jobs"],
                env={**env, "ORCHESTRATOR_DATABASE_URL": unreachable},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert cli.returncode == 1, cli.stderr
            for proc in procs.values():
                proc.terminate()
            rcs = {name: proc.wait(timeout=30) for name, proc in procs.items()}
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        webhook_requests = hooks.requests
        received = otlp.received
        exported: dict[str, list[tuple[str, bytes]]] = {
            "spans": [(text_format.MessageToString(m), m.SerializeToString()) for m in received.traces],
            "log records": [(text_format.MessageToString(m), m.SerializeToString()) for m in received.logs],
            "metrics": [(text_format.MessageToString(m), m.SerializeToString()) for m in received.metrics],
        }
    assert rcs == {"serve": 0, "worker": 0}, rcs
    texts: dict[str, list[str]] = {
        "process output (serve, worker)": [p.read_text(errors="replace") for p in logs.values()],
        "failed CLI stderr+stdout": [cli.stderr + cli.stdout],
        "webhook requests": [
            str(dict(r.headers)) + r.body.decode("utf-8", errors="replace") + r.path for r in webhook_requests
        ],
    }
    leaks: list[str] = []
    for kind, items in exported.items():
        for text, raw in items:
            for name, value in SECRETS.items():
                if value in text or value.encode() in raw:
                    leaks.append(f"{name} in exported {kind}")
    for kind, blobs in texts.items():
        for blob in blobs:
            for name, value in SECRETS.items():
                if value in blob:
                    leaks.append(f"{name} in {kind}")
    spans = list(received.spans())
    records = list(received.log_records())
    figures(
        "secrets scan",
        {
            "jobs (API + worker process)": dict(statuses),
            "webhook deliveries received": len(webhook_requests),
            "exported spans / log records / metric requests": f"{len(spans)} / {len(records)} / "
            f"{len(received.metrics)}",
            "process output lines": sum(t.count("\n") for t in texts["process output (serve, worker)"]),
            "unreachable-database CLI error": cli.stderr.strip().splitlines()[-1][:110],
            "secrets searched": ", ".join(SECRETS),
            "leaked secrets": len(leaks),
        },
    )
    # The scan is not vacuous: non-secret values of the same requests are there.
    assert any(PROJECT in text for text, _ in exported["spans"])
    assert any(PROJECT in text for text, _ in exported["log records"])
    assert any(job_ids[0] in t for t in texts["process output (serve, worker)"])
    assert len(spans) > 20
    assert len(records) > 50
    assert received.metrics
    assert statuses == {"completed": 1, "failed": 2, "cancelled": 1}, statuses
    assert not leaks, Counter(leaks)


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
