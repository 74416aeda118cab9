#!/bin/sh
# Load generator for the compose stack (docker-compose.yml, service `loadgen`; it runs in
# the orchestrator image, which has Python). Traffic like `orchestrator demo`, forever:
#
#   * writes the demo's sample projects into $LOADGEN_SAMPLES (a volume the api and the
#     workers mount at the same path): clean-service completes, broken-manifest fails
#     (malformed package.json: a `module` error in the `execute` phase), large-monorepo
#     completes with secrets/todos overrunning their expected runtime, nightly-batch is
#     cancelled while it runs;
#   * subscribes a webhook per project to a small sink in this process that answers 500
#     to one delivery in five, so retries and failed deliveries show up too;
#   * submits a job every $LOADGEN_INTERVAL_SECONDS through the HTTP API (POST /v1/jobs)
#     and cancels the nightly-batch ones shortly after they start.
#
# Jobs go through the API, not `orchestrator submit`: one long-lived API process records
# the create spans and metrics, instead of a new short-lived process (and a new
# service.instance.id, hence new metric series) per job.
set -eu

: "${LOADGEN_API:=http://api:8000}"
: "${LOADGEN_SAMPLES:=/samples}"
: "${LOADGEN_INTERVAL_SECONDS:=3}"
: "${LOADGEN_SINK_PORT:=9000}"
: "${LOADGEN_SINK_URL:=http://loadgen:${LOADGEN_SINK_PORT}/hook}"
export LOADGEN_API LOADGEN_SAMPLES LOADGEN_INTERVAL_SECONDS LOADGEN_SINK_PORT LOADGEN_SINK_URL

exec python - <<'PY'
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from orchestrator.cli.demo import write_sample_projects

API = os.environ["LOADGEN_API"].rstrip("/")
SAMPLES = Path(os.environ["LOADGEN_SAMPLES"])
INTERVAL = float(os.environ["LOADGEN_INTERVAL_SECONDS"])
SINK_PORT = int(os.environ["LOADGEN_SINK_PORT"])
SINK_URL = os.environ["LOADGEN_SINK_URL"]
TOKEN = os.environ.get("ORCHESTRATOR_API_TOKEN", "")
ALIVE = Path("/tmp/loadgen.alive")
# project -> weight; nightly-batch jobs are cancelled while they run.
MIX = {"clean-service": 4, "broken-manifest": 2, "large-monorepo": 3, "nightly-batch": 1}


def log(message: str) -> None:
    print(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadgen": message}), flush=True)


def call(method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        API + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **({"authorization": f"Bearer {TOKEN}"} if TOKEN else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


class Sink(BaseHTTPRequestHandler):
    """Receives the orchestrator's webhooks; one delivery in five gets a 500."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(500 if random.random() < 0.2 else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def cancel_when_running(job_id: str) -> None:
    for _ in range(100):
        time.sleep(0.2)
        try:
            status = call("GET", f"/v1/jobs/{job_id}")["status"]
            if status == "running":
                call("POST", f"/v1/jobs/{job_id}/cancel?reason=cancelled+by+the+load+generator")
                return
            if status in ("completed", "failed", "cancelled"):
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log(f"cancel {job_id}: {exc}")
            return


def main() -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    samples = {s.project_id: s for s in write_sample_projects(SAMPLES)}
    log(f"sample projects in {SAMPLES}: {', '.join(samples)}")
    threading.Thread(target=ThreadingHTTPServer(("0.0.0.0", SINK_PORT), Sink).serve_forever, daemon=True).start()
    for project_id in samples:
        try:
            call("POST", "/v1/webhooks", {"project_id": project_id, "url": SINK_URL, "secret": "loadgen-" + "x" * 16})
        except (urllib.error.URLError, OSError) as exc:
            log(f"webhook for {project_id} not registered: {exc}")
    projects, weights = list(MIX), list(MIX.values())
    submitted = 0
    while True:
        ALIVE.touch()
        project_id = random.choices(projects, weights)[0]
        try:
            job = call("POST", "/v1/jobs", {"project_id": project_id, "source": str(samples[project_id].path)})
            submitted += 1
            if samples[project_id].cancel_while_running:
                threading.Thread(target=cancel_when_running, args=(job["id"],), daemon=True).start()
            if submitted % 20 == 0:
                log(f"{submitted} jobs submitted")
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log(f"submit {project_id}: {exc}")
        time.sleep(INTERVAL * random.uniform(0.5, 1.5))


main()
PY
