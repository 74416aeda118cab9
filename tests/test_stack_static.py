"""Static checks of the observability stack (no network, no Docker): docker-compose.yml,
Dockerfile, collector-config.yaml, deploy/ (Tempo, Loki, Prometheus and its rules) and
grafana/ (datasources, dashboards), and that every metric they name is one the code emits.

The Compose schema is vendored in tests/data/compose-spec.json (see tests/data/README.md).
promtool runs via subprocess; without it these tests skip outside CI and fail in CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from stack_helpers import (
    COLLECTOR,
    COLLECTOR_METRICS,
    COMPOSE,
    COMPOSE_SCHEMA,
    DASHBOARDS,
    DATASOURCES,
    DEPLOY,
    DOCKERFILE,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES_DIR,
    SPAN_METRICS,
    all_promql,
    dashboard_exprs,
    dashboards,
    datasources,
    generator,
    iter_panels,
    load_json,
    load_yaml,
    metric_names,
    require_tool,
    rule_files,
    rule_test_files,
    rules,
    target_datasource,
    unknown_metric_names,
    vocabulary_names,
)

from orchestrator.cli.demo import write_sample_projects
from orchestrator.cli.main import build_parser
from otel.vocabulary import METRICS, Attr, MetricKind, SpanName, prometheus_name

# -- docker-compose.yml ----------------------------------------------------------------

# Services without a healthcheck of their own, and why. The first three are probed by
# `telemetry-health` (their images have no shell or HTTP client we can rely on).
NO_HEALTHCHECK = {
    "otel-collector": "http://otel-collector:13133/",
    "tempo": "http://tempo:3200/ready",
    "loki": "http://loki:3100/ready",
    "migrate": None,  # one-shot: others wait for service_completed_successfully
}

# The release lines the design asks for (DESIGN.md §6); the exact tags and digests are
# checked against deploy/upstream-facts/images.json in tests/test_stack_upstream.py.
EXPECTED_IMAGES = {
    "otel-collector": r"otel/opentelemetry-collector-contrib:0\.159\.0",
    "tempo": r"grafana/tempo:3\.0\.\d+",
    "loki": r"grafana/loki:3\.7\.\d+",
    "prometheus": r"prom/prometheus:v3\.\d+\.\d+",
    "grafana": r"grafana/grafana:13\.\d+\.\d+",
}
IMAGE = re.compile(r"(?P<name>[a-z0-9./-]+):(?P<tag>[A-Za-z0-9._-]+)(?:@sha256:(?P<digest>[0-9a-f]{64}))?")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = load_json(COMPOSE_SCHEMA)
    # The vendored schema declares draft 2019-09 (under a URL jsonschema does not map).
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_rejects_an_unknown_service_key(compose: dict[str, Any]) -> None:
    schema = load_json(COMPOSE_SCHEMA)
    broken = {**compose, "services": {**compose["services"], "api": {**compose["services"]["api"], "helthcheck": {}}}}
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def _volume_entries(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    entries = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            entries.append((source, rest.split(":")[0]))
        else:
            entries.append((volume.get("source", ""), volume["target"]))
    return entries


def test_every_bind_mount_exists_and_every_named_volume_is_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for source, target in _volume_entries(service):
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists(), f"{name}: bind mount {source} does not exist"
                assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            else:
                assert source in declared, f"{name}: named volume {source!r} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_every_reference_resolves(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = spec["condition"]
            target = services[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency} to be healthy, it has no healthcheck"
            if condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is waited for to complete: restart must be 'no'"
    # Host names in URLs and probes are services.
    text = COMPOSE.read_text(encoding="utf-8")
    for host in set(re.findall(r"(?:https?|postgresql)://(?:[^@/\s]+@)?([a-z][a-z0-9-]*)[:/]", text)):
        assert host in services or host == "localhost", f"URL host {host!r} is not a service"


def test_no_dependency_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_published_ports_are_unique_and_local(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) == 3, f"{name}: publish {port} on an explicit host address"
            host_ip, host_port, _ = parts
            assert host_ip == "127.0.0.1", f"{name}: {port} is published beyond localhost"
            assert host_port not in published, f"port {host_port} published by {published.get(host_port)} and {name}"
            published[host_port] = name
    assert published.get("3000") == "grafana"


def test_healthchecks_everywhere_they_can_be(services: dict[str, dict[str, Any]]) -> None:
    probe = " ".join(services["telemetry-health"]["healthcheck"]["test"])
    for name, service in services.items():
        if name in NO_HEALTHCHECK:
            # None, or the image's own switched off (migrate: the orchestrator image's probes the API).
            assert service.get("healthcheck", {"disable": True}) == {"disable": True}, (
                f"{name} has a healthcheck after all: update NO_HEALTHCHECK"
            )
            url = NO_HEALTHCHECK[name]
            if url is not None:
                assert url in probe, f"telemetry-health does not probe {name} ({url})"
        else:
            assert "healthcheck" in service, f"{name} has no healthcheck"
    # Whoever needs the telemetry backends waits for the probe.
    for name in ("api", "worker", "grafana"):
        assert services[name]["depends_on"]["telemetry-health"]["condition"] == "service_healthy"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        match = IMAGE.fullmatch(image)
        assert match, f"{name}: {image} is not name:tag or name:tag@sha256:<64 hex>"
        assert match["tag"] != "latest", f"{name}: {image} is not pinned"
        if name in EXPECTED_IMAGES:
            assert re.fullmatch(EXPECTED_IMAGES[name], f"{match['name']}:{match['tag']}"), (
                f"{name}: {image} is not {EXPECTED_IMAGES[name]}"
            )


def test_orchestrator_services_run_real_commands_on_postgres(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    for name in ("api", "worker", "migrate"):
        service = services[name]
        assert service["build"]["dockerfile"] == "Dockerfile"
        parser.parse_args(service["command"])  # raises SystemExit on a command the CLI does not know
        url = service["environment"]["ORCHESTRATOR_DATABASE_URL"]
        assert url.startswith("postgresql://"), url
        assert "@postgres:5432/" in url, url
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers-in-process", "0"]
    assert services["worker"]["command"] == ["worker"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["OTEL_SERVICE_NAME"] == "orchestrator"
        # The samples the load generator writes must be where the api and workers look.
        assert ("samples", "/samples") in _volume_entries(services[name])
    loadgen = services["loadgen"]
    assert ("./deploy/loadgen.sh", "/loadgen/loadgen.sh") in _volume_entries(loadgen)
    assert loadgen["environment"]["LOADGEN_SAMPLES"] == "/samples"
    assert (DEPLOY / "loadgen.sh").read_text(encoding="utf-8").startswith("#!/bin/sh")


# Issue "Safe to expose": the settings the API reads (orchestrator/settings.py).
API_SERVICES = ("api",)  # services that run `orchestrator serve`
# Services that deliver webhooks or accept subscriptions to the load generator's receiver
# (a private address on the compose network), and only those.
ALLOW_PRIVATE_WEBHOOKS = {"api", "worker"}


def test_every_api_service_requires_a_token_that_the_load_generator_sends(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if (service.get("command") or [None])[0] == "serve":
            assert name in API_SERVICES, f"{name} serves the API: add it to API_SERVICES"
    for name in API_SERVICES:
        env = services[name]["environment"]
        token = env.get("ORCHESTRATOR_API_TOKEN")
        # A non-loopback bind without a token refuses to start; an empty one is an error.
        assert token, f"{name} binds 0.0.0.0 without ORCHESTRATOR_API_TOKEN"
        assert re.fullmatch(r"\$\{ORCHESTRATOR_API_TOKEN:-[A-Za-z0-9-]{16,}\}", token), token
        assert "ORCHESTRATOR_API_INSECURE_NO_AUTH" not in env
    assert services["loadgen"]["environment"]["ORCHESTRATOR_API_TOKEN"] == services["api"]["environment"][
        "ORCHESTRATOR_API_TOKEN"
    ]
    script = (DEPLOY / "loadgen.sh").read_text(encoding="utf-8")
    assert 'os.environ.get("ORCHESTRATOR_API_TOKEN"' in script
    assert '"authorization": f"Bearer {TOKEN}"' in script


def test_api_jobs_are_confined_to_the_load_generators_samples(services: dict[str, dict[str, Any]]) -> None:
    samples = services["loadgen"]["environment"]["LOADGEN_SAMPLES"]
    for name in ("api", "worker"):
        roots = services[name]["environment"]["ORCHESTRATOR_SOURCE_ROOTS"].split(":")
        assert roots == [samples], roots
        assert ("samples", samples) in _volume_entries(services[name])


def test_private_webhook_targets_only_where_the_load_generator_needs_them(services: dict[str, dict[str, Any]]) -> None:
    # No service may reach every private address; those that deliver or check the load
    # generator's webhooks may reach its host, and only it.
    assert not [n for n, s in services.items() if "ORCHESTRATOR_WEBHOOK_ALLOW_PRIVATE" in (s.get("environment") or {})]
    allowed = {
        name: s["environment"]["ORCHESTRATOR_WEBHOOK_PRIVATE_HOSTS"]
        for name, s in services.items()
        if "ORCHESTRATOR_WEBHOOK_PRIVATE_HOSTS" in (s.get("environment") or {})
    }
    sink = urlsplit(services["loadgen"]["environment"]["LOADGEN_SINK_URL"]).hostname
    assert sink == "loadgen", "the private receiver is the load generator's own"
    assert allowed == dict.fromkeys(ALLOW_PRIVATE_WEBHOOKS, sink)


def test_the_api_answers_every_host_name_its_clients_use(services: dict[str, dict[str, Any]]) -> None:
    allowed = services["api"]["environment"]["ORCHESTRATOR_API_ALLOWED_HOSTS"].split(",")
    used = {urlsplit(services["loadgen"]["environment"]["LOADGEN_API"]).hostname}
    used |= set(re.findall(r"https?://([a-z0-9.-]+):8000", json.dumps(services["api"]["healthcheck"])))
    used |= set(re.findall(r"https?://([a-z0-9.-]+):\$\{?API_PORT", (DEPLOY / "smoke.sh").read_text(encoding="utf-8")))
    used |= {"localhost"}  # the README's curl lines and a browser on this machine
    assert used <= set(allowed), f"hosts the api would refuse: {used - set(allowed)}"
    assert "*" not in allowed


def test_loadgen_script_is_valid_shell_and_python() -> None:
    script = (DEPLOY / "loadgen.sh").read_text(encoding="utf-8")
    subprocess.run(["sh", "-n", str(DEPLOY / "loadgen.sh")], check=True)
    body = script.split("<<'PY'\n", 1)[1].rsplit("\nPY\n", 1)[0]
    compile(body, "loadgen.sh (python)", "exec")
    assert "broken-manifest" in body or "write_sample_projects" in body


# -- deploy/smoke.sh: in step with the compose file ----------------------------------------

SMOKE = DEPLOY / "smoke.sh"


def _smoke_settings() -> dict[str, str]:
    text = SMOKE.read_text(encoding="utf-8")
    settings = {m[1]: m[2].strip('"') for m in re.finditer(r"^([A-Z_]+)=(\S.*?)(?:\s+#.*)?$", text, re.M)}
    panels = re.search(r"^QUESTION_PANELS=\((.*?)^\)", text, re.M | re.S)
    assert panels, "QUESTION_PANELS not found"
    settings["QUESTION_PANELS"] = "\n".join(re.findall(r'"([^"]+)"', panels.group(1)))
    return settings


def _published(service: dict[str, Any], container_port: str) -> str:
    for port in service["ports"]:
        host_ip, host_port, inside = str(port).split(":")
        if inside == container_port:
            assert host_ip == "127.0.0.1"
            return host_port
    raise AssertionError(f"port {container_port} is not published")


def test_smoke_script_is_valid_shell() -> None:
    subprocess.run(["bash", "-n", str(SMOKE)], check=True)
    assert SMOKE.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert SMOKE.stat().st_mode & 0o111, "deploy/smoke.sh is not executable"


def test_smoke_script_uses_the_compose_services_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    smoke = _smoke_settings()
    assert set(smoke["SERVICES"].split()) == set(services), "SERVICES differs from docker-compose.yml"
    assert smoke["PROBE_SERVICE"] == "telemetry-health"
    assert services["telemetry-health"]["image"].startswith("busybox:"), "the probe needs busybox's wget"
    assert smoke["API_PORT"] == _published(services["api"], "8000")
    assert smoke["PROMETHEUS_PORT"] == _published(services["prometheus"], "9090")
    assert smoke["GRAFANA_PORT"] == _published(services["grafana"], "3000")
    tempo = load_yaml(DEPLOY / "tempo/tempo.yaml")["server"]["http_listen_port"]
    loki = load_yaml(DEPLOY / "loki/loki.yaml")["server"]["http_listen_port"]
    assert smoke["TEMPO_URL"] == f"http://tempo:{tempo}"
    assert smoke["LOKI_URL"] == f"http://loki:{loki}"
    # The same development defaults as compose (token, Grafana admin password).
    token_default = services["api"]["environment"]["ORCHESTRATOR_API_TOKEN"]
    assert smoke["TOKEN"] == token_default
    assert smoke["GRAFANA_AUTH"] == "admin:" + services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert smoke["SAMPLES"] == services["loadgen"]["environment"]["LOADGEN_SAMPLES"]


def test_smoke_script_checks_the_dashboards_datasources_and_questions() -> None:
    module = generator()
    smoke = _smoke_settings()
    assert set(smoke["DASHBOARDS"].split()) == {board["uid"] for board in dashboards().values()}
    assert set(smoke["DATASOURCES"].split()) == set(datasources())
    assert smoke["QUESTION_PANELS"].splitlines() == [
        module.Q1_FAILURES_BY_PHASE,
        module.Q2_OVERRUNS_BY_MODULE,
        module.Q3_PLATFORM_VS_MODULE,
        module.Q4_PHASE_TABLE,
    ]
    # The sample projects it submits exist, with the outcomes the demo gives them.
    text = SMOKE.read_text(encoding="utf-8")
    expected = dict(re.findall(r"\[([a-z-]+)\]=(completed|failed|cancelled)", text))
    assert expected == {
        "clean-service": "completed",
        "large-monorepo": "completed",
        "broken-manifest": "failed",
        "nightly-batch": "cancelled",
    }
    with tempfile.TemporaryDirectory() as folder:
        samples = {s.project_id: s for s in write_sample_projects(Path(folder))}
    assert set(samples) == set(expected)
    assert {p for p, s in samples.items() if s.cancel_while_running} == {"nightly-batch"}


def test_grafana_is_on_localhost_3000_for_anonymous_viewers(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert "127.0.0.1:3000:3000" in grafana["ports"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = dict(_volume_entries(grafana))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(ROOT / "grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def test_prometheus_receives_otlp_and_stores_exemplars(services: dict[str, dict[str, Any]]) -> None:
    flags = services["prometheus"]["command"]
    for flag in (
        "--web.enable-otlp-receiver",
        "--enable-feature=exemplar-storage",
        "--web.enable-remote-write-receiver",
    ):
        assert flag in flags
    assert "--config.file=/etc/prometheus/prometheus.yml" in flags
    assert dict(_volume_entries(services["prometheus"]))["./deploy/prometheus"] == "/etc/prometheus"


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _instruction(stage: list[str], keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0] == keyword]


def test_dockerfile_builds_the_wheel_and_installs_only_the_wheel() -> None:
    build, final = _dockerfile_stages()
    assert re.fullmatch(r"python:3\.11\.\d+-slim AS build", _instruction(build, "FROM")[0])
    assert any("pip wheel --no-deps --wheel-dir /wheels ." in run for run in _instruction(build, "RUN"))
    for line in _instruction(build, "COPY"):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    # The final stage gets the wheel and the constraints, never the source tree.
    assert _instruction(final, "FROM")[0] == _instruction(build, "FROM")[0].removesuffix(" AS build")
    copies = _instruction(final, "COPY")
    assert copies == ["--from=build /wheels /tmp/wheels", "constraints.txt /tmp/constraints.txt"], copies
    (install,) = _instruction(final, "RUN")
    assert install.startswith("pip install -c /tmp/constraints.txt /tmp/wheels/orchestrator-*.whl")
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    for needed in ("orchestrator", "otel", "pyproject.toml", "constraints.txt", "README.md"):
        assert needed not in ignored, f".dockerignore excludes {needed}, which the image needs"


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    _, final = _dockerfile_stages()
    (user,) = _instruction(final, "USER")
    assert user not in ("root", "0"), user
    assert not user.startswith(("0:", "root:")), user
    assert "useradd --create-home --uid 10001 orchestrator" in _instruction(final, "RUN")[0]


def _exec_form(instruction: str) -> list[str]:
    value = json.loads(instruction)
    assert isinstance(value, list), f"{instruction}: use the exec (JSON) form"
    return [str(v) for v in value]


def test_dockerfile_and_compose_agree_on_port_command_and_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    _, final = _dockerfile_stages()
    api = services["api"]
    (expose,) = _instruction(final, "EXPOSE")
    container_ports = {str(port).rsplit(":", 1)[1] for port in api["ports"]}
    assert container_ports == {expose}
    # The image's default command is the compose api's command, a command the CLI knows.
    assert _exec_form(_instruction(final, "ENTRYPOINT")[0]) == ["orchestrator"]
    command = _exec_form(_instruction(final, "CMD")[0])
    assert command == api["command"]
    build_parser().parse_args(command)
    port = command[command.index("--port") + 1]
    assert port == expose
    # Both healthchecks are Python one-liners (no curl in the image) against the API's
    # open health routes on the port it listens on.
    (healthcheck,) = _instruction(final, "HEALTHCHECK")
    image_probe = _exec_form(healthcheck.split(" CMD ", 1)[1])
    compose_probe = api["healthcheck"]["test"]
    for probe in (image_probe, compose_probe[1:]):
        assert probe[:2] == ["python", "-c"], probe
        url = re.search(r"urlopen\('([^']+)'", probe[2])
        assert url, probe
        parts = urlsplit(url.group(1))
        assert (parts.hostname, str(parts.port)) == ("127.0.0.1", port), url.group(1)
        assert parts.path in {"/healthz", "/readyz"}, url.group(1)
    assert compose_probe[0] == "CMD"
    # The one-shot migration has no API to probe; the load generator and workers have
    # healthchecks of their own instead of the image's.
    assert services["migrate"]["healthcheck"] == {"disable": True}
    for name in ("worker", "loadgen"):
        assert "healthcheck" in services[name], name
        assert "8000" not in json.dumps(services[name]["healthcheck"]), name


# -- collector-config.yaml -------------------------------------------------------------

# Component types are checked against the 0.159.0 release in tests/test_stack_upstream.py.
PIPELINE_PARTS = ("receivers", "processors", "exporters")


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_collector_pipelines_reference_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    connectors = set(collector.get("connectors") or {})
    used: dict[str, set[str]] = {kind: set() for kind in (*PIPELINE_PARTS, "connectors")}
    connector_roles: dict[str, set[str]] = {c: set() for c in connectors}
    for pipeline_id, pipeline in pipelines.items():
        assert _type(pipeline_id) in {"traces", "metrics", "logs"}, f"pipeline {pipeline_id}"
        assert pipeline.get("receivers"), f"{pipeline_id} needs receivers"
        assert pipeline.get("exporters"), f"{pipeline_id} needs exporters"
        for part in PIPELINE_PARTS:
            for component_id in pipeline.get(part, []):
                if part != "processors" and component_id in connectors:
                    used["connectors"].add(component_id)
                    connector_roles[component_id].add(part)
                    continue
                assert component_id in (collector.get(part) or {}), f"{pipeline_id}: {part} {component_id} undefined"
                used[part].add(component_id)
    for part in PIPELINE_PARTS:
        unused = set(collector.get(part) or {}) - used[part]
        assert not unused, f"{part} defined but in no pipeline: {unused}"
    for connector, roles in connector_roles.items():
        assert roles == {"receivers", "exporters"}, f"connector {connector} must be an exporter and a receiver"
    for extension in collector["service"].get("extensions", []):
        assert extension in collector["extensions"], f"extension {extension} undefined"


def test_collector_pipelines_start_with_memory_limiter_and_end_with_batch(collector: dict[str, Any]) -> None:
    for pipeline_id, pipeline in collector["service"]["pipelines"].items():
        processors = [_type(p) for p in pipeline.get("processors", [])]
        assert processors[:1] == ["memory_limiter"], f"{pipeline_id}: memory_limiter must come first"
        assert processors[-1:] == ["batch"], f"{pipeline_id}: batch must come last"


def test_collector_exporters_queue_and_retry(collector: dict[str, Any]) -> None:
    for exporter_id, config in collector["exporters"].items():
        if _type(exporter_id) in {"debug", "nop"}:
            continue
        assert config["sending_queue"]["enabled"] is True, exporter_id
        assert config["sending_queue"]["queue_size"] > 0, exporter_id
        assert config["retry_on_failure"]["enabled"] is True, exporter_id


def test_collector_exports_to_each_backend(collector: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    exporters = collector["exporters"]
    pipelines = collector["service"]["pipelines"]
    assert exporters["otlp_grpc/tempo"]["endpoint"] == "tempo:4317"
    assert exporters["otlp_http/loki"]["endpoint"] == "http://loki:3100/otlp"
    assert exporters["otlp_http/prometheus"]["endpoint"] == "http://prometheus:9090/api/v1/otlp"
    assert "otlp_grpc/tempo" in pipelines["traces"]["exporters"]
    assert "otlp_http/loki" in pipelines["logs"]["exporters"]
    assert "otlp_http/prometheus" in pipelines["metrics"]["exporters"]
    for exporter in exporters.values():
        host = urlsplit(exporter["endpoint"] if "://" in exporter["endpoint"] else f"x://{exporter['endpoint']}")
        assert host.hostname in services, f"{exporter['endpoint']}: no such service"
    # The backends listen where the collector sends.
    tempo = load_yaml(DEPLOY / "tempo/tempo.yaml")
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert load_yaml(DEPLOY / "loki/loki.yaml")["server"]["http_listen_port"] == 3100
    assert load_yaml(DEPLOY / "loki/loki.yaml")["limits_config"]["allow_structured_metadata"] is True


def test_collector_receives_otlp_and_reports_health_and_its_own_metrics(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert collector["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    assert "health_check" in collector["service"]["extensions"]
    reader = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert (reader["host"], reader["port"]) == ("0.0.0.0", 8888)
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert scrape["otel-collector"]["static_configs"][0]["targets"] == ["otel-collector:8888"]


def test_span_metrics_dimensions_have_low_cardinality(collector: dict[str, Any]) -> None:
    connector = collector["connectors"]["span_metrics"]
    dimensions = {d["name"] for d in connector.get("dimensions", [])}
    forbidden = {Attr.JOB_ID, Attr.PROJECT_ID, Attr.TRACE_ID, Attr.SPAN_ID, Attr.REASON, Attr.WORKER_ID}
    assert not dimensions & forbidden, f"high-cardinality span-metric dimensions: {dimensions & forbidden}"
    assert connector["aggregation_cardinality_limit"] > 0
    assert connector["namespace"] == "traces.span.metrics"
    assert connector["histogram"]["unit"] == "s"


# -- Grafana ---------------------------------------------------------------------------


def test_datasources_have_fixed_uids_and_correlations() -> None:
    sources = datasources()
    assert {uid: s["type"] for uid, s in sources.items()} == {
        "prometheus": "prometheus",
        "tempo": "tempo",
        "loki": "loki",
    }
    assert [d["datasourceUid"] for d in sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]] == ["tempo"]
    assert sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]["name"] == Attr.TRACE_ID
    tempo = sources["tempo"]["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["tracesToLogsV2"]["customQuery"] is True
    assert 'trace_id=~"0*$${__trace.traceId}"' in tempo["tracesToLogsV2"]["query"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    (derived,) = sources["loki"]["jsonData"]["derivedFields"]
    assert (derived["matcherType"], derived["matcherRegex"], derived["datasourceUid"]) == ("label", "trace_id", "tempo")
    for source in sources.values():
        host = urlsplit(source["url"])
        assert host.hostname in load_yaml(COMPOSE)["services"], source["url"]


# Labels of each metric family as the stack's Prometheus stores them: the vocabulary's
# attributes, plus `job`/`instance` from the resource (service.name, service.instance.id).
RESOURCE_LABELS = {"job", "instance"}
# The span_metrics connector's own dimensions (collector-config.yaml adds its own below).
SPAN_METRICS_LABELS = {"service_name", "span_name", "span_kind", "status_code"}


def _labels(metric_name: str) -> set[str]:
    collector = load_yaml(COLLECTOR)["connectors"]["span_metrics"]
    if metric_name in SPAN_METRICS:
        assert collector.get("add_resource_attributes") is True, "span metrics would lose job/instance"
        dimensions = {d["name"].replace(".", "_") for d in collector["dimensions"]}
        return SPAN_METRICS_LABELS | dimensions | RESOURCE_LABELS
    for spec in METRICS:
        if metric_name.startswith(prometheus_name(spec)):
            return {str(a) for a in spec.attributes} | RESOURCE_LABELS
    raise AssertionError(f"{metric_name}: unknown metric")


def test_trace_to_metrics_tags_exist_on_every_metric_they_filter() -> None:
    """$__tags filters on every tag the span carries: a metric without one of the labels
    returns nothing (the failures counter has no `module`)."""
    trace_to_metrics = datasources()["tempo"]["jsonData"]["tracesToMetrics"]
    tag_labels = {tag.get("value") or tag["key"] for tag in trace_to_metrics["tags"]}
    assert tag_labels == {"job", "module"}
    for query in trace_to_metrics["queries"]:
        if "$$__tags" not in query["query"]:
            continue
        for name in metric_names(query["query"]):
            missing = tag_labels - _labels(name)
            assert not missing, f"{query['name']!r}: {name} has no {missing} label, $__tags matches nothing"
    assert _labels("orchestrator_job_failures_total") == {"phase", "error_category", "job", "instance"}


def test_provisioning_escapes_grafana_variables_from_env_expansion() -> None:
    # Grafana expands $VAR and ${VAR} in provisioning files from the environment; a
    # Grafana variable must be written $${...} or $$__name to survive.
    text = json.dumps(load_yaml(DATASOURCES))  # values only, not comments
    assert not re.findall(r"(?<!\$)\$\{?__", text), "unescaped Grafana variable in datasources.yaml"
    assert "$${__trace.traceId}" in text
    assert "$${__value.raw}" in text
    assert "{$$__tags}" in text


def test_dashboards_are_generated_from_the_vocabulary() -> None:
    module = generator()
    built = module.build()
    assert set(built) == {path.name for path in DASHBOARDS.glob("*.json")}
    for name, board in built.items():
        committed = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert committed == module.render(board), (
            f"{name} is stale: run .venv/bin/python grafana/generate_dashboards.py"
        )


def test_dashboards_are_valid_with_unique_ids_and_known_datasources() -> None:
    uids = set(datasources())
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == {"orchestrator-operations", "orchestrator-job"}
    for name, board in boards.items():
        ids = [panel["id"] for panel in iter_panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in iter_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{name}: panel {panel['title']!r} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{name}: panel {panel['title']!r} repeats a refId"
            for target in panel["targets"]:
                assert target_datasource(panel, target) in uids, f"{name}: {panel['title']!r} unknown datasource"
            for key in ("x", "y", "w", "h"):
                assert isinstance(panel["gridPos"][key], int)
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_dashboard_variable_is_defined() -> None:
    for name, board in dashboards().items():
        defined = {variable["name"] for variable in board["templating"]["list"]}
        text = json.dumps(board["panels"]) + json.dumps(board["links"])
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)) | set(re.findall(r"\[\[(\w+)", text))
        builtin = {v for v in used if v.startswith("__")}
        assert used - builtin <= defined, f"{name}: undefined variables {used - builtin - defined}"
        assert defined <= used, f"{name}: unused variables {defined - used}"


def test_histogram_panels_show_exemplars() -> None:
    for expr in dashboard_exprs("prometheus"):
        if "_bucket[$__rate_interval]" in expr.expr:
            target = _target(expr)
            assert target["exemplar"] is True, f"{expr.where}: exemplars off on a histogram panel"


def _target(expr: Any) -> dict[str, Any]:
    for board in dashboards().values():
        for panel in iter_panels(board["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr") == expr.expr and panel.get("title") == expr.panel:
                    return dict(target)
    raise AssertionError(expr.where)


def test_operations_dashboard_answers_the_four_questions() -> None:
    module = generator()
    board = dashboards()["orchestrator-operations.json"]
    titles = {panel["title"]: panel for panel in iter_panels(board["panels"])}
    for title in (
        module.Q1_FAILURES_BY_PHASE,
        module.Q2_OVERRUNS_BY_MODULE,
        module.Q2_MODULES_TABLE,
        module.Q3_FAILURES_BY_CATEGORY,
        module.Q3_PLATFORM_VS_MODULE,
        module.Q4_PHASE_TABLE,
        "Module duration p95 vs expected runtime",
        "Time in phase p50 / p95",
        "Queue wait p50 / p95",
        "Throughput by final status",
        "In-flight jobs",
        "Queue depth",
        "Webhook deliveries by outcome",
        "Recent failed jobs",
    ):
        assert title in titles, f"operations dashboard lacks {title!r}"
    q1 = titles[module.Q1_FAILURES_BY_PHASE]["targets"][0]["expr"]
    assert q1.startswith("sort_desc(sum by (phase) (")
    assert prometheus_name(_spec("orchestrator.job.failures")) in q1
    failed = titles["Recent failed jobs"]["targets"][0]["query"]
    assert failed.startswith(f'{{ name = "{SpanName.JOB}" && span.status = "failed" }}')
    links = json.dumps(titles["Recent failed jobs"]["fieldConfig"])
    for needed in ("tempo", "loki", "${__value.raw}"):
        assert needed in links


def test_job_drilldown_dashboard() -> None:
    board = dashboards()["orchestrator-job.json"]
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"]) == (Attr.JOB_ID, "textbox")
    traceql = [e.expr for e in dashboard_exprs("tempo") if "orchestrator-job" in e.where]
    logql = [e.expr for e in dashboard_exprs("loki") if "orchestrator-job" in e.where]
    assert '{ span.job_id = "$job_id" }' in traceql
    assert '{service_name="orchestrator"} | job_id = "$job_id"' in logql
    assert any(f'{Attr.STATUS_TO} != ""' in q for q in logql)


def _spec(name: str) -> Any:
    return next(spec for spec in METRICS if spec.name == name)


def test_traceql_and_logql_use_vocabulary_attributes() -> None:
    attributes = {value for key, value in vars(Attr).items() if key.isupper()}
    for expr in dashboard_exprs("tempo"):
        for attribute in re.findall(r"\bspan\.([A-Za-z_][A-Za-z0-9_.]*)", expr.expr):
            assert attribute in attributes, f"{expr.where}: span.{attribute} is not in otel.vocabulary.Attr"
        for name in re.findall(r'\bname = "([^"]+)"', expr.expr):
            assert name in {v for k, v in vars(SpanName).items() if k.isupper()}, f"{expr.where}: span name {name}"
    for expr in dashboard_exprs("loki"):
        for label in re.findall(r"\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=|!=|=~|!~)", expr.expr):
            assert label in attributes, f"{expr.where}: {label} is not in otel.vocabulary.Attr"


# -- one source of truth: metric names -------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (phase) (increase(orchestrator_job_failures_total{phase="x orchestrator_fake_total "}[5m]))'
        " / orchestrator_module_duration_seconds_count)"
        " + histogram_quantile(0.9, rate(otelcol_exporter_queue_size [1m]))"
        " + orchestrator:recorded:rule"
    )
    assert metric_names(expr) == {
        "orchestrator_job_failures_total",
        "orchestrator_module_duration_seconds_count",
        "otelcol_exporter_queue_size",
    }
    assert unknown_metric_names("rate(orchestrator_job_failure_total[5m])") == {"orchestrator_job_failure_total"}
    assert unknown_metric_names("orchestrator_module_duration_seconds") == {"orchestrator_module_duration_seconds"}
    assert unknown_metric_names("rate(otelcol_exporter_sent_spans[5m])") == {"otelcol_exporter_sent_spans"}


def test_vocabulary_names_follow_the_prometheus_translation() -> None:
    names = vocabulary_names()
    assert "orchestrator_job_failures_total" in names
    assert "orchestrator_job_phase_duration_seconds_bucket" in names
    assert "orchestrator_module_expected_runtime_seconds" in names
    assert "orchestrator_jobs_active" in names
    assert len(names) == sum(3 if s.kind is MetricKind.HISTOGRAM else 1 for s in METRICS)


def test_every_metric_in_dashboards_rules_and_datasources_is_emitted() -> None:
    exprs = all_promql()
    assert len(exprs) > 30
    problems = [f"{e.where}: {sorted(unknown_metric_names(e.expr))}" for e in exprs if unknown_metric_names(e.expr)]
    assert not problems, "names nothing emits:\n" + "\n".join(problems)
    used = set().union(*(metric_names(e.expr) for e in exprs))
    # The dashboards cover every metric the code emits (bar the histograms' _sum where only buckets matter).
    uncovered = {prometheus_name(s) for s in METRICS if not any(n.startswith(prometheus_name(s)) for n in used)}
    assert not uncovered, f"metrics no dashboard or rule shows: {uncovered}"
    assert {n for n in used if n.startswith("otelcol_")} <= COLLECTOR_METRICS
    assert {n for n in used if n.startswith("traces_")} <= SPAN_METRICS


# -- Prometheus rules and promtool -----------------------------------------------------


def test_every_alert_is_labelled_documented_and_unit_tested() -> None:
    tested = set()
    for path in rule_test_files():
        spec = load_yaml(path)
        assert {f"{p}" for p in spec["rule_files"]} <= {p.name for p in rule_files()}, path
        for test in spec["tests"]:
            tested.update(case["alertname"] for case in test.get("alert_rule_test", []))
    for rule in rules():
        name = rule.get("alert")
        if name is None:
            continue
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert name in tested, f"alert {name} has no promtool unit test"


def _promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _promtool_major() -> int:
    out = _promtool("--version").stdout + _promtool("--version").stderr
    match = re.search(r"version (\d+)\.", out)
    assert match, out
    return int(match.group(1))


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *(p.name for p in rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    files = rule_test_files()
    assert files
    result = _promtool("test", "rules", *(p.name for p in files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(tmp_path: Path) -> None:
    """The compose config uses Prometheus 3.x keys (the `otlp:` block). Debian's promtool
    2.42 does not know them: there the config is checked without that block (scrape
    configs, rule files and everything else are still checked)."""
    config = PROMETHEUS_CONFIG
    if _promtool_major() < 3:
        stripped = load_yaml(PROMETHEUS_CONFIG)
        assert set(stripped.pop("otlp")) == {"translation_strategy", "promote_resource_attributes"}
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps(stripped), encoding="utf-8")  # JSON is YAML
        (tmp_path / "rules").symlink_to(RULES_DIR, target_is_directory=True)
    result = _promtool("check", "config", str(config), cwd=config.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rule_files())} rule files found" in result.stdout
