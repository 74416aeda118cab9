"""Safe to expose (issue 11): a real ``orchestrator serve`` on 127.0.0.1, attacked the way
a local user or a web page would. Every refusal is checked by its exact status and body.

Each group of tests shares one server (module-scoped) configured for it; the servers run
with no in-process worker unless a test needs one, so created jobs stay queued."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api_helpers import Served, serve_env, start_serve
from webhook_receiver import Reply, receiver

from orchestrator.domain import InvalidRequest
from orchestrator.usecases import sources
from orchestrator.usecases.sources import SourcePolicy

TOKEN = "tok-" + "a1b2c3d4" * 6  # long, printable, and easy to grep for
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOT_ALLOWED = {
    "error": {
        "status": 422,
        "code": "validation_error",
        "message": "source: not found, or not inside the server's source roots",
        "field": "source",
    }
}
NOT_ABSOLUTE = {
    "error": {
        "status": 422,
        "code": "validation_error",
        "message": "source: must be an absolute path",
        "field": "source",
    }
}
UNAUTHORIZED = {
    "error": {"status": 401, "code": "unauthorized", "message": "a valid bearer token is required", "field": None}
}
INVALID_HOST = {
    "error": {
        "status": 400,
        "code": "invalid_host",
        "message": "the Host header names no host this server answers to (ORCHESTRATOR_API_ALLOWED_HOSTS)",
        "field": None,
    }
}


def body(response: httpx.Response) -> Any:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()


def make_tree(base: Path) -> Path:
    """``base/root`` (the source root) with a project, and things that point out of it."""
    root = base / "root"
    project = root / "project"
    project.mkdir(parents=True)
    (project / "main.py").write_text("print('hello')\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for API clients\n")
    (root / "to-outside").symlink_to(outside)
    (root / "to-etc").symlink_to("/etc")
    (root / "to-proc").symlink_to("/proc/self")
    os.mkfifo(root / "fifo")
    return root


# -- a locked-down server: roots, token, docs protected, short deadlines ------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    base = tmp_path_factory.mktemp("locked")
    root = make_tree(base)
    served = start_serve(
        base / "data",
        source_roots=root,
        api_token=TOKEN,
        api_protect_docs="true",
        api_header_timeout_seconds=1,
        api_body_timeout_seconds=1,
        # The standard OTel variable that copies request headers into spans: all of them.
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=".*",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        yield served, root
    finally:
        served.stop()


def test_sources_outside_the_roots_are_refused_alike(locked: tuple[Served, Path]) -> None:
    served, root = locked
    base = root.parent
    refused = {
        # outside the roots, existing and missing: one answer (no existence oracle)
        "/etc/passwd": NOT_ALLOWED,
        "/etc/shadow": NOT_ALLOWED,
        "/root/.ssh/id_rsa": NOT_ALLOWED,
        "/definitely/not/here": NOT_ALLOWED,
        str(base / "outside"): NOT_ALLOWED,
        str(root / "missing"): NOT_ALLOWED,
        # escapes through symlinks and ..
        str(root / "to-outside"): NOT_ALLOWED,
        str(root / "to-outside" / "secret.txt"): NOT_ALLOWED,
        str(root / "to-etc"): NOT_ALLOWED,
        str(root / "project" / ".." / ".." / "outside"): NOT_ALLOWED,
        f"{root}/../outside/secret.txt": NOT_ALLOWED,
        # pseudo-filesystems, directly or through a link inside the root
        "/proc/self/environ": NOT_ALLOWED,
        "/proc/kmsg": NOT_ALLOWED,
        "/sys": NOT_ALLOWED,
        "/dev/zero": NOT_ALLOWED,
        str(root / "to-proc"): NOT_ALLOWED,
        # not a file or a directory (its reads would block)
        str(root / "fifo"): NOT_ALLOWED,
        # the server's home and working directory are not the client's business
        "~": NOT_ABSOLUTE,
        "~/.ssh": NOT_ABSOLUTE,
        "~root/.ssh/id_rsa": NOT_ABSOLUTE,
        "project": NOT_ABSOLUTE,
        "../etc/passwd": NOT_ABSOLUTE,
    }
    with served.client(headers=AUTH) as client:
        answers = {
            source: client.post("/v1/jobs", json={"project_id": "acme", "source": source, "modules": ["todos"]})
            for source in refused
        }
        accepted = client.post("/v1/jobs", json={"project_id": "acme", "source": str(root / "project")})
        listed = body(client.get("/v1/jobs"))

    assert {source: (r.status_code, body(r)) for source, r in answers.items()} == {
        source: (422, expected) for source, expected in refused.items()
    }
    # The bodies of a missing and of an existing forbidden path are byte for byte the same.
    assert answers["/definitely/not/here"].content == answers["/etc/passwd"].content
    assert accepted.status_code == 201, accepted.text
    assert body(accepted)["source"] == str((root / "project").resolve())
    assert [job["id"] for job in listed["items"]] == [body(accepted)["id"]]  # nothing else was created


def test_every_route_needs_the_token_docs_included(locked: tuple[Served, Path]) -> None:
    served, _ = locked
    routes = [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/some-id"),
        ("POST", "/v1/jobs/some-id/cancel"),
        ("GET", "/v1/jobs/some-id/events"),
        ("GET", "/v1/jobs/some-id/deliveries"),
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/some-id"),
        ("DELETE", "/v1/webhooks/some-id"),
        ("GET", "/v1/webhooks/some-id/deliveries"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("GET", "/openapi.json"),
        ("GET", "/docs-assets/swagger-ui-bundle.js"),
        ("GET", "/no-such-path"),
    ]
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}]
    with served.client() as client:
        for method, path in routes:
            for headers in wrong:
                response = client.request(method, path, headers=headers, json={"x": 1})
                assert (response.status_code, body(response)) == (401, UNAUTHORIZED), (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        # The probes stay open (they say nothing a client could use).
        assert body(client.get("/healthz"))["status"] == "ok"
        assert body(client.get("/readyz"))["status"] == "ready"
        # With the token: through to the route (a 404 for an unknown id, the docs themselves).
        assert client.get("/v1/jobs/some-id", headers=AUTH).status_code == 404
        assert client.get("/openapi.json", headers=AUTH).status_code == 200
        assert client.get("/docs", headers=AUTH).status_code == 200
        assert client.get("/v1/jobs", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200


def test_the_host_header_must_be_one_the_server_answers_to(locked: tuple[Served, Path]) -> None:
    served, _ = locked
    with served.client(headers=AUTH) as client:
        for host in ("evil.example", f"evil.example:{served.port}", "localhost.evil.example", "127.0.0.2", "[::2]"):
            response = client.get("/v1/jobs", headers={"Host": host})
            assert (response.status_code, body(response)) == (400, INVALID_HOST), host
        # The Host check comes before the token: a rebound page learns nothing more.
        response = client.get("/v1/jobs", headers={"Host": "evil.example", "Authorization": "Bearer x"})
        assert (response.status_code, body(response)) == (400, INVALID_HOST)
        for host in ("localhost", f"localhost:{served.port}", f"127.0.0.1:{served.port}", f"[::1]:{served.port}"):
            assert client.get("/v1/jobs", headers={"Host": host}).status_code == 200, host


CROSS_SITE = {
    "error": {
        "status": 403,
        "code": "cross_site_request",
        "message": "a browser sent this request for another site (Origin / Sec-Fetch-Site); state-changing requests "
        "are accepted from this server's own origin or from clients that are not browsers",
        "field": None,
    }
}


def test_without_a_token_a_page_of_another_site_cannot_create_cancel_or_delete(tmp_path: Path) -> None:
    """A loopback API without a token, and a web page of another site POSTing to it (a
    form, or fetch in no-cors mode: no preflight): refused, and nothing is written."""
    root = make_tree(tmp_path)
    served = start_serve(tmp_path / "data", "--workers-in-process", "0", source_roots=root)
    create = {"project_id": "acme", "source": str(root / "project")}
    try:
        with served.client() as client:
            job_id = body(client.post("/v1/jobs", json=create))["id"]  # no Origin: not a browser
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": f"http://evil.example:{served.port}"},
                {"Origin": "null"},  # a sandboxed frame, a file: page
                {"Origin": "http://localhost.evil.example"},
                {"Sec-Fetch-Site": "cross-site"},
                {"Origin": f"http://localhost:{served.port}", "Sec-Fetch-Site": "cross-site"},
            ):
                for method, path, payload in (
                    ("POST", "/v1/jobs", create),
                    ("POST", f"/v1/jobs/{job_id}/cancel", None),
                    ("DELETE", f"/v1/jobs/{job_id}", None),
                ):
                    response = client.request(method, path, json=payload, headers=headers)
                    assert (response.status_code, body(response)) == (403, CROSS_SITE), (method, path, headers)
                # reading is not state-changing (and a page cannot read the answer without CORS)
                assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
            listed = body(client.get("/v1/jobs"))
            same_origin = client.post(
                f"/v1/jobs/{job_id}/cancel",
                headers={"Origin": f"http://localhost:{served.port}", "Sec-Fetch-Site": "same-origin"},
            )
    finally:
        served.stop()
    assert [job["id"] for job in listed["items"]] == [job_id]  # no job created by the refused requests
    assert listed["items"][0]["status"] == "queued"  # neither cancelled nor deleted by them
    # the API's own origin may (a queued job is cancelled at once)
    assert (same_origin.status_code, body(same_origin)["status"]) == (200, "cancelled")


SSRF = {
    "http://127.0.0.1/h": "url: refused: 127.0.0.1 is not a public address (loopback)",
    "http://localhost:8000/h": "url: refused: localhost resolves to a non-public address: 127.0.0.1 is not a public "
    "address (loopback)",
    "http://2130706433/h": "url: 2130706433 is a non-canonical IPv4 address: write it as a dotted quad (a.b.c.d)",
    "http://0x7f.0.0.1/h": "url: 0x7f.0.0.1 is a non-canonical IPv4 address: write it as a dotted quad (a.b.c.d)",
    "http://0x7f000001/h": "url: 0x7f000001 is a non-canonical IPv4 address: write it as a dotted quad (a.b.c.d)",
    "http://127.1/h": "url: 127.1 is a non-canonical IPv4 address: write it as a dotted quad (a.b.c.d)",
    "http://0177.0.0.1/h": "url: not a valid URL (Invalid IPv4 address: '0177.0.0.1')",
    "http://10.0.0.1/h": "url: refused: 10.0.0.1 is not a public address (private)",
    "http://169.254.169.254/latest/meta-data": "url: refused: 169.254.169.254 is not a public address (link-local)",
    "http://100.100.100.200/h": "url: refused: 100.100.100.200 is not a public address (not globally routable)",
    "http://0.0.0.0/h": "url: refused: 0.0.0.0 is not a public address (unspecified)",
    "http://[::1]/h": "url: refused: ::1 is not a public address (loopback)",
    "http://[::ffff:127.0.0.1]/h": "url: refused: ::ffff:127.0.0.1 is an IPv4-mapped IPv6 address (of 127.0.0.1)",
    "http://[::ffff:8.8.8.8]/h": "url: refused: ::ffff:8.8.8.8 is an IPv4-mapped IPv6 address (of 8.8.8.8)",
    "http://[::127.0.0.1]/h": "url: refused: ::7f00:1 is an IPv4-compatible IPv6 address (of 127.0.0.1)",
    "http://[64:ff9b::a9fe:a9fe]/h": "url: refused: 64:ff9b::a9fe:a9fe is a NAT64 form of 169.254.169.254, which is "
    "not public",
    "http://[64:ff9b::7f00:1]/h": "url: refused: 64:ff9b::7f00:1 is a NAT64 form of 127.0.0.1, which is not public",
    "http://[64:ff9b:1::a00:1]/h": "url: refused: 64:ff9b:1::a00:1 is a local-use NAT64 address",
    "http://[2002:7f00:1::1]/h": "url: refused: 2002:7f00:1::1 is a 6to4 form of 127.0.0.1, which is not public",
    "http://[fd00:ec2::254]/h": "url: refused: fd00:ec2::254 is not a public address (private)",
    # IPv4-translated (SIIT), site-local, and other space outside IPv6 global unicast 2000::/3
    "http://[::ffff:0:7f00:1]/h": "url: refused: ::ffff:0:7f00:1 is an IPv4-translated IPv6 address (of 127.0.0.1)",
    "http://[fec0::1]/h": "url: refused: fec0::1 is not a public address (outside global unicast 2000::/3)",
    "http://[5f00::1]/h": "url: refused: 5f00::1 is not a public address (outside global unicast 2000::/3)",
    "http://[3fff::1]/h": "url: refused: 3fff::1 is not a public address (documentation)",
    "http://[fe80::1]/h": "url: refused: fe80::1 is not a public address (link-local)",
    "http://user:pw@hooks.example.com/h": "url: must not contain credentials (use the signing secret)",
    "http://hooks.example.com@127.0.0.1/h": "url: must not contain credentials (use the signing secret)",
    "http://127.0.0.1\\@hooks.example.com/h": "url: must not contain credentials (use the signing secret)",
    "ftp://hooks.example.com/h": "url: only http and https URLs are allowed",
}


def test_non_public_webhook_targets_are_refused_at_subscription(locked: tuple[Served, Path]) -> None:
    served, _ = locked
    with served.client(headers=AUTH) as client:
        answers = {
            url: client.post("/v1/webhooks", json={"project_id": "acme", "url": url, "secret": "s" * 20})
            for url in SSRF
        }
        listed = body(client.get("/v1/webhooks"))
        # A public target is accepted (its name need not resolve now: DNS may be down).
        url = "https://hooks.example.com/services/T000/B000/XXXXSECRET?token=abc"
        created = client.post("/v1/webhooks", json={"project_id": "acme", "url": url, "secret": "s" * 20})
        shown = client.get("/v1/webhooks").text

    assert {url: (r.status_code, body(r)) for url, r in answers.items()} == {
        url: (422, {"error": {"status": 422, "code": "validation_error", "message": message, "field": "url"}})
        for url, message in SSRF.items()
    }
    assert listed == []
    assert created.status_code == 201, created.text
    hook = body(created)
    assert (hook["url"], hook["url_sha256"]) == (
        "https://hooks.example.com/…",
        hashlib.sha256(url.encode()).hexdigest()[:16],
    )
    assert "XXXXSECRET" not in created.text + shown
    assert "token=abc" not in created.text + shown


def test_slow_clients_are_cut(locked: tuple[Served, Path]) -> None:
    served, _ = locked
    # A request head trickled one byte at a time: closed at the 1 s head deadline.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(100):  # up to 10 s of trickling
            try:
                slow.sendall(b"X")
                slow.settimeout(0.1)
                closed = slow.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "a request head trickled for 10 s was not cut"
    # A body trickled after its headers: 408 at the 1 s body deadline.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as slow:
        slow.sendall(
            f"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        answer = b""
        slow.settimeout(10)
        while True:  # until the server closes the connection (Connection: close)
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(rest) == {
        "error": {
            "status": 408,
            "code": "body_timeout",
            "message": "request body not received within 1 s",
            "field": None,
        }
    }


def test_the_token_never_reaches_telemetry(locked: tuple[Served, Path]) -> None:
    served, _ = locked
    with served.client() as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=AUTH).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    telemetry = served.data_dir / "telemetry"

    def flushed() -> bool:
        spans = telemetry / "traces.jsonl"
        return spans.exists() and "[REDACTED]" in spans.read_text()

    deadline = time.monotonic() + 15
    while not flushed():
        assert time.monotonic() < deadline, "no span with the captured (redacted) Authorization header"
        time.sleep(0.1)
    everything = served.output() + "".join(p.read_text(errors="replace") for p in telemetry.glob("*.jsonl"))
    assert TOKEN not in everything
    assert TOKEN[4:20] not in everything
    spans = (telemetry / "traces.jsonl").read_text()
    assert '"http.request.header.authorization"' in spans  # the header was captured, and redacted


# -- what serve refuses to start with, and warns about -------------------------------------


@pytest.mark.parametrize(
    ("args", "settings", "message"),
    [
        (
            ["--host", "0.0.0.0"],
            {},
            "orchestrator: error: refusing to serve on 0.0.0.0 without a token: set ORCHESTRATOR_API_TOKEN, or "
            "ORCHESTRATOR_API_INSECURE_NO_AUTH=true to let anyone who can reach it create jobs",
        ),
        (
            [],
            {"api_token": ""},
            "orchestrator: error: invalid setting api_token (ORCHESTRATOR_API_TOKEN): Value error, is empty: set a "
            "long random value, or unset it to turn authentication off",
        ),
        (
            [],
            {"api_protect_docs": "true"},
            "orchestrator: error: ORCHESTRATOR_API_PROTECT_DOCS=true needs ORCHESTRATOR_API_TOKEN",
        ),
        (
            [],
            {"source_roots": "/proc"},
            "orchestrator: error: ORCHESTRATOR_SOURCE_ROOTS: /proc is not a directory jobs may analyse",
        ),
    ],
    ids=["public-bind-without-token", "empty-token", "protected-docs-without-token", "pseudo-root"],
)
def test_serve_refuses_an_unsafe_configuration(
    tmp_path: Path, args: list[str], settings: dict[str, str], message: str
) -> None:
    served = start_serve(tmp_path / "data", *args, wait=False, **settings)
    code = served.popen.wait(30)
    lines = [line for line in served.output().splitlines() if line.strip()]
    assert code == 2
    assert lines[-1] == message, lines


def test_serve_without_token_or_roots_warns_and_creates_no_api_job(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    served = start_serve(tmp_path / "data")
    try:
        with served.client() as client:
            response = client.post("/v1/jobs", json={"project_id": "acme", "source": str(tmp_path / "project")})
            docs = client.get("/docs")
            assets = {name: client.get(f"/docs-assets/{name}") for name in ("swagger-ui-bundle.js", "swagger-ui.css")}
            redoc = client.get("/redoc")
    finally:
        served.stop()
    assert (response.status_code, body(response)) == (
        422,
        {
            "error": {
                "status": 422,
                "code": "validation_error",
                "message": "source: this server accepts no job sources from API clients: its operator must set "
                "ORCHESTRATOR_SOURCE_ROOTS to the directories jobs may analyse",
                "field": "source",
            }
        },
    )
    warnings = [
        r["message"]
        for r in map(json.loads, filter(lambda line: line.startswith("{"), served.output().splitlines()))
        if r.get("event") == "api.security"
    ]
    assert warnings == [
        "authentication is OFF: this machine can use the API on 127.0.0.1 (set ORCHESTRATOR_API_TOKEN to require a "
        "token)",
        "no ORCHESTRATOR_SOURCE_ROOTS: API clients cannot create jobs until it names the directories they may analyse",
    ]
    # Docs work offline: every script and style comes from this server.
    assert docs.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text + redoc.text
    assert "https://" not in docs.text.replace("https://swagger.io", "")
    assert {name: (r.status_code, len(r.content) > 10_000) for name, r in assets.items()} == {
        "swagger-ui-bundle.js": (200, True),
        "swagger-ui.css": (200, True),
    }


def test_a_public_bind_without_token_needs_the_loud_opt_out(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "data", "--host", "0.0.0.0", api_insecure_no_auth="true")
    try:
        with served.client() as client:
            assert client.get("/v1/jobs").status_code == 200
    finally:
        served.stop()
    assert "authentication is OFF: ANYONE WHO CAN REACH IT can use the API on 0.0.0.0" in served.output()


# -- bounded cost per client ---------------------------------------------------------------


def test_queue_cap_and_create_rate_answer_with_retry_after(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    served = start_serve(tmp_path / "data", source_roots=root, max_queued_jobs=2, api_create_rate_per_minute=4)
    job = {"project_id": "acme", "source": str(root / "project"), "modules": ["todos"]}
    try:
        with served.client() as client:
            answers = [client.post("/v1/jobs", json=job) for _ in range(5)]
    finally:
        served.stop()
    assert [r.status_code for r in answers] == [201, 201, 503, 503, 429]
    assert body(answers[2]) == {
        "error": {
            "status": 503,
            "code": "queue_full",
            "message": "the job queue is full (2 jobs waiting); retry later",
            "field": None,
        }
    }
    assert answers[2].headers["retry-after"] == "5"
    assert body(answers[4]) == {
        "error": {
            "status": 429,
            "code": "rate_limited",
            "message": "more than 4 jobs a minute from this client; retry in 15 s",
            "field": None,
        }
    }
    assert answers[4].headers["retry-after"] == "15"


def _http_series(metrics_file: Path) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """(metric, attributes) of every http.server.* point in the last export."""
    last: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for line in metrics_file.read_text().splitlines():
        for resource in json.loads(line)["resourceMetrics"]:
            for scope in resource["scopeMetrics"]:
                for metric in scope["metrics"]:
                    if not metric["name"].startswith("http.server."):
                        continue
                    kind = next(k for k in ("sum", "histogram", "gauge") if k in metric)
                    last[metric["name"]] = {
                        tuple(sorted((a["key"], str(next(iter(a["value"].values())))) for a in p.get("attributes", [])))
                        for p in metric[kind]["dataPoints"]
                    }
    return {(name, attrs) for name, points in last.items() for attrs in points}


def test_random_hosts_paths_and_methods_do_not_grow_the_metric_series(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "data", api_token=TOKEN, OTEL_METRIC_EXPORT_INTERVAL="200")
    rng = random.Random(11)

    def noise(count: int) -> None:
        with served.client() as client:
            for i in range(count):
                word = "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))
                client.request(
                    rng.choice(["GET", "POST", "DELETE", f"X{word[:6].upper()}"]),
                    rng.choice([f"/v1/jobs/{word}", f"/{word}", "/v1/jobs"]),
                    headers={"Host": f"{word}.example:{i}"},
                )

    try:
        noise(300)
        with served.client(headers=AUTH) as client:
            assert client.get("/v1/jobs/nope").status_code == 404
        noise(300)
    finally:
        served.stop()
    series = _http_series(served.data_dir / "telemetry" / "metrics.jsonl")

    def point(method: str, code: str, target: str | None = None) -> tuple[tuple[str, str], ...]:
        attrs = [("http.method", method), ("http.scheme", "http"), ("http.status_code", code)]
        return tuple(sorted(attrs + ([("http.target", target)] if target else [])))

    duration = {point(m, "400") for m in ("GET", "POST", "DELETE", "_OTHER")} | {
        point("GET", "404", "/v1/jobs/{job_id}")
    }
    active = {(("http.method", m), ("http.scheme", "http")) for m in ("GET", "POST", "DELETE", "_OTHER")}
    expected = (
        {("http.server.duration", a) for a in duration}
        | {("http.server.response.size", a) for a in duration}
        | {("http.server.active_requests", a) for a in active}
    )
    # 600 random Host headers, paths and methods later: the same handful of series.
    assert {s for s in series if s[0] != "http.server.request.size"} == expected
    assert len(series) <= len(expected) + 4  # request.size: only requests with a body


# -- webhooks: a slow receiver is cut, and delays nobody ------------------------------------


def test_a_trickling_receiver_is_cut_at_the_deadline_and_delays_no_one(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    with receiver(default=Reply(200, trickle=2.0)) as slow, receiver() as fast:
        served = start_serve(
            tmp_path / "data",
            "--workers-in-process",
            "1",
            source_roots=root,
            webhook_allow_private="true",
            webhook_timeout_seconds=3,
            webhook_max_attempts=1,
        )
        try:
            with served.client() as client:
                # Both want the same event: their deliveries leave together, whatever the
                # job's own run takes on a loaded machine.
                for url in (slow.url, fast.url):
                    hook = {"project_id": "acme", "url": url, "secret": "s" * 20, "events": ["job.lifecycle.enqueue"]}
                    assert client.post("/v1/webhooks", json=hook).status_code == 201
                created = client.post("/v1/jobs", json={"project_id": "acme", "source": str(root / "project")})
                assert created.status_code == 201, created.text
                job_id = body(created)["id"]
                [to_slow] = slow.wait_for(1, timeout=15)
                [to_fast] = fast.wait_for(1, timeout=15)
                deliveries = _settled_deliveries(client, job_id, 2)
        finally:
            served.stop()

    by_status = {d["status"]: d for d in deliveries}
    assert sorted(by_status) == ["dead", "delivered"], deliveries
    cut = by_status["dead"]
    # The other subscription's delivery arrived while the slow receiver was still
    # trickling its answer: nobody waited for it.
    assert slow.finished[to_slow.delivery_id] > to_fast.at
    [attempt] = cut["history"]
    assert (cut["status"], attempt["outcome"], attempt["error"]) == (
        "dead",
        "dead",
        "timeout: no complete answer within the 3 s deadline",
    )
    assert 3000 <= attempt["duration_ms"] < 3000 + 2000  # cut at the deadline, not after the 100,000 bytes


def test_private_targets_are_allowed_only_for_the_hosts_named(tmp_path: Path) -> None:
    """ORCHESTRATOR_WEBHOOK_PRIVATE_HOSTS: a receiver on a private address named by its
    host name (compose: the load generator's) gets its deliveries; every other non-public
    target, the same address written otherwise included, is still refused."""
    root = make_tree(tmp_path)
    with receiver() as hook:
        port = urlsplit(hook.url).port
        served = start_serve(
            tmp_path / "data",
            "--workers-in-process",
            "1",
            source_roots=root,
            webhook_private_hosts=" LOCALHOST. , receiver.internal",
        )
        try:
            with served.client() as client:
                subscribe = {"project_id": "acme", "secret": "s" * 20, "events": ["job.lifecycle.enqueue"]}
                named = client.post("/v1/webhooks", json={**subscribe, "url": f"http://localhost:{port}/hook"})
                assert named.status_code == 201, named.text
                for url, message in (
                    (f"http://127.0.0.1:{port}/hook", "url: refused: 127.0.0.1 is not a public address (loopback)"),
                    ("http://10.0.0.1/hook", "url: refused: 10.0.0.1 is not a public address (private)"),
                ):
                    refused = client.post("/v1/webhooks", json={**subscribe, "url": url})
                    assert (refused.status_code, body(refused)["error"]["message"]) == (422, message), url
                created = client.post("/v1/jobs", json={"project_id": "acme", "source": str(root / "project")})
                assert created.status_code == 201, created.text
                [delivered] = hook.wait_for(1, timeout=15)
        finally:
            served.stop()
    assert delivered.event == "job.lifecycle.enqueue"
    assert body(created)["id"] in delivered.body.decode()


def _settled_deliveries(client: httpx.Client, job_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = body(client.get(f"/v1/jobs/{job_id}/deliveries"))
        if len(found) == count and all(d["status"] != "pending" for d in found):
            return list(found)
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


# -- a module thread blocked in a read does not stop shutdown -------------------------------

BLOCKER = '''
import anyio

from orchestrator import BaseModule


class Blocker(BaseModule):
    """Opens a FIFO nobody writes to: its thread blocks in the kernel for good."""

    name = "blocker"
    expected_runtime = 1.0
    timeout = 600.0

    async def run(self, context):
        fifo = context.options["fifo"]
        return await anyio.to_thread.run_sync(lambda: open(fifo, "rb").read())
'''


def test_a_module_blocked_in_a_read_does_not_stop_shutdown(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    plugin = tmp_path / "plugin"
    (plugin / "security_blocker").mkdir(parents=True)
    (plugin / "security_blocker" / "__init__.py").write_text(BLOCKER)
    dist = plugin / "security_blocker-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: security-blocker\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[orchestrator.modules]\nblocker = security_blocker:Blocker\n")
    grace, abandon = 2.0, 1.0
    env = serve_env(
        tmp_path / "data",
        source_roots=root,
        load_entry_points="true",
        shutdown_grace_seconds=grace,
        module_abandon_seconds=abandon,
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))
    served = start_serve(tmp_path / "data", "--workers-in-process", "1", env=env)
    try:
        with served.client() as client:
            job = {
                "project_id": "acme",
                "source": str(root / "project"),
                "modules": ["blocker"],
                "options": {"module_options": {"blocker": {"fifo": str(root / "fifo")}}},
            }
            created = client.post("/v1/jobs", json=job)
            assert created.status_code == 201, created.text
            job_id = body(created)["id"]
            deadline = time.monotonic() + 15
            while body(client.get(f"/v1/jobs/{job_id}"))["status"] != "running":
                assert time.monotonic() < deadline, "the job never ran"
                time.sleep(0.05)
    finally:
        started = time.monotonic()
        code = served.stop(timeout=grace + 20)
        took = time.monotonic() - started
    assert code == 0, served.output()[-2000:]
    assert took < grace + abandon + 8, f"serve took {took:.1f} s to stop with a {grace} s grace"
    # The module, deaf to its cancellation, was abandoned: its job went back to the queue
    # at once (it used to stay Running until its lease expired, the process killed by its
    # exit watchdog), and the thread it left blocked does not hold the exit.
    output = served.output()
    assert "module blocker: it ignored the cancellation for 1 s and was abandoned" in output, output[-3000:]
    assert "leaving 1 blocked thread(s) behind at exit: AnyIO worker thread" in output
    database = sqlite3.connect(tmp_path / "data" / "orchestrator.db")
    try:
        status, reason = database.execute("SELECT status, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        database.close()
    assert (status, reason) == ("queued", "worker_shutdown")


# -- a source swapped for a symlink while its job waited in the queue ----------------------


def test_a_source_swapped_for_a_symlink_after_creation_is_not_analysed(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    swap = root / "swap"
    swap.mkdir()
    (swap / "a.py").write_text("x = 1\n")
    (tmp_path / "outside" / "leaked.py").write_text("password = 'leaked-value-123'  # TODO leaked-marker\n")
    data = tmp_path / "data"
    # Created by an API-only server: the source was inside the roots then.
    queued = start_serve(data, "--workers-in-process", "0", source_roots=root)
    try:
        with queued.client() as client:
            created = client.post(
                "/v1/jobs", json={"project_id": "acme", "source": str(swap), "modules": ["todos", "inventory"]}
            )
    finally:
        queued.stop()
    assert created.status_code == 201, created.text
    job_id = body(created)["id"]
    # Someone who may write inside the root swaps the folder for a link out of it.
    shutil.rmtree(swap)
    swap.symlink_to(tmp_path / "outside", target_is_directory=True)
    running = start_serve(data, "--workers-in-process", "1", source_roots=root)
    try:
        with running.client() as client:
            deadline = time.monotonic() + 20
            while (job := body(client.get(f"/v1/jobs/{job_id}")))["status"] not in ("completed", "failed"):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            shown = client.get(f"/v1/jobs/{job_id}").text
    finally:
        running.stop()
    changed = f"source {swap} changed since the job was created (a symbolic link now stands in its path): not analysed"
    assert job["status"] == "failed"
    assert {r["module"]: (r["outcome"], r["error"]) for r in job["results"]} == {
        "inventory": ("error", changed),
        "todos": ("error", changed),
    }
    for leaked in ("leaked", "secret.txt", "outside"):
        assert leaked not in shown


# -- who is trusted with which path (the use case's two policies) ---------------------------


def test_the_cli_is_trusted_with_readable_paths_but_never_with_pseudo_filesystems(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    trusted, confined = SourcePolicy.trusted(), SourcePolicy.confined([root])
    outside = tmp_path / "outside"
    assert trusted.check(str(outside)) == outside.resolve()
    with pytest.raises(InvalidRequest) as refused:
        confined.check(str(outside))
    assert refused.value.message == NOT_ALLOWED["error"]["message"]
    for pseudo in ("/proc/self/status", str(root / "to-proc")):
        with pytest.raises(InvalidRequest) as pseudo_refused:
            trusted.check(pseudo)
        assert "is on a pseudo-filesystem (/proc, /sys, /dev)" in pseudo_refused.value.message
    with pytest.raises(InvalidRequest) as missing:
        trusted.check(str(tmp_path / "nope"))
    assert missing.value.message == f"source: {tmp_path / 'nope'} does not exist"  # the local user gets details


def test_a_path_is_on_a_pseudo_filesystem_exactly_when_it_lies_under_one_of_its_mounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mounts = (Path("/mnt/a b"), Path("/srv/kernel/debug"))
    monkeypatch.setattr(sources, "_pseudo_mounts", lambda: mounts)
    sources._pseudo_roots.cache_clear()
    try:
        roots = (Path("/proc"), Path("/sys"), Path("/dev"), *mounts)
        for text in (
            "/proc", "/proc/self/status", "/procfs", "/procfs/x", "/pro", "/sys", "/sysroot/usr", "/dev/null",
            "/devices", "/mnt/a b", "/mnt/a b/c", "/mnt/a bc", "/mnt/a", "/srv/kernel/debug/tracing",
            "/srv/kernel/debugger", "/srv/kernel", "/", "/work/main",
        ):
            path = Path(text)
            expected = any(path.is_relative_to(root) for root in roots)  # pathlib's own answer
            assert sources.is_pseudo_filesystem(path) is expected, text
    finally:
        sources._pseudo_roots.cache_clear()


def test_the_source_check_reads_the_mount_table_as_the_walk_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One parser and one list of types for both: a selinuxfs mount (a type the source
    check's own list once lacked) and a mount point with an escaped blank are refused."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / /sys/fs/selinux rw,relatime shared:6 - selinuxfs selinuxfs rw\n"
        "23 1 0:22 / /srv/odd\\040place rw - debugfs debugfs rw\n"
        "24 1 8:1 / /srv/data rw,relatime shared:1 master:2 - ext4 /dev/sda1 rw\n"
        "not a mount line\n"
    )
    with table.open("ab") as fh:  # a mount point that is not UTF-8, as the kernel writes it
        fh.write(b"25 1 0:23 / /srv/caf\xe9 rw - proc proc rw\n")
    monkeypatch.setattr(sources, "MOUNTINFO", table)
    sources._pseudo_mounts.cache_clear()
    sources._pseudo_roots.cache_clear()
    try:
        odd = Path(os.fsdecode(b"/srv/caf\xe9"))  # how a realpath of it reads
        assert sources._pseudo_mounts() == (Path("/sys/fs/selinux"), Path("/srv/odd place"), odd)
        assert sources.is_pseudo_filesystem(odd / "x")
        assert sources.is_pseudo_filesystem(Path("/srv/odd place/x"))
        assert not sources.is_pseudo_filesystem(Path("/srv/data/x"))
    finally:
        sources._pseudo_mounts.cache_clear()
        sources._pseudo_roots.cache_clear()
