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

# The pinned versions the design asks for (DESIGN.md §6).
EXPECTED_IMAGES = {
    "otel-collector": r"otel/opentelemetry-collector-contrib:0\.159\.0",
    "tempo": r"grafana/tempo:3\.0\.\d+",
    "loki": r"grafana/loki:3\.7\.\d+",
    "prometheus": r"prom/prometheus:v3\.\d+\.\d+",
    "grafana": r"grafana/grafana:13\.\d+\.\d+",
}


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
            assert "healthcheck" not in service, f"{name} has a healthcheck after all: update NO_HEALTHCHECK"
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
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} is not pinned"
        assert tag not in ("", "latest"), f"{name}: {image} is not pinned"
        if name in EXPECTED_IMAGES:
            assert re.fullmatch(EXPECTED_IMAGES[name], image), f"{name}: {image} is not {EXPECTED_IMAGES[name]}"


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


def test_loadgen_script_is_valid_shell_and_python() -> None:
    script = (DEPLOY / "loadgen.sh").read_text(encoding="utf-8")
    subprocess.run(["sh", "-n", str(DEPLOY / "loadgen.sh")], check=True)
    body = script.split("<<'PY'\n", 1)[1].rsplit("\nPY\n", 1)[0]
    compile(body, "loadgen.sh (python)", "exec")
    assert "broken-manifest" in body or "write_sample_projects" in body


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


def test_dockerfile_installs_the_project_with_constraints() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install -c constraints.txt ." in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    for needed in ("orchestrator", "otel", "pyproject.toml", "constraints.txt", "README.md"):
        assert needed not in ignored, f".dockerignore excludes {needed}, which the image needs"


# -- collector-config.yaml -------------------------------------------------------------

# Component types of otelcol-contrib 0.159.0 this stack may use, by kind (a deliberately
# short list of current names; extend it when a new component is needed and exists).
# Since 0.144 the OTLP exporters are otlp_grpc/otlp_http; span_metrics replaced spanmetrics.
COLLECTOR_COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset(
        {"otlp", "prometheus", "filelog", "hostmetrics", "docker_stats", "journald", "httpcheck", "nop"}
    ),
    "processors": frozenset(
        {
            "memory_limiter",
            "batch",
            "attributes",
            "resource",
            "resourcedetection",
            "filter",
            "transform",
            "tail_sampling",
            "probabilistic_sampler",
            "groupbyattrs",
            "cumulativetodelta",
            "deltatocumulative",
            "redaction",
        }
    ),
    "exporters": frozenset({"otlp_grpc", "otlp_http", "debug", "prometheus", "prometheusremotewrite", "file", "nop"}),
    "connectors": frozenset({"span_metrics", "servicegraph", "count", "forward", "routing", "exceptions"}),
    "extensions": frozenset({"health_check", "pprof", "zpages", "basicauth", "bearertokenauth", "file_storage"}),
}
# Deprecated aliases (still accepted by 0.159.0, with a warning) and removed components.
COLLECTOR_DEPRECATED = {
    ("exporters", "otlp"): "otlp_grpc",
    ("exporters", "otlphttp"): "otlp_http",
    ("connectors", "spanmetrics"): "span_metrics",
    ("exporters", "logging"): "debug",
    ("exporters", "loki"): "otlp_http to Loki's /otlp",
}
PIPELINE_PARTS = ("receivers", "processors", "exporters")


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_collector_components_are_known_current_types(collector: dict[str, Any]) -> None:
    for kind, allowed in COLLECTOR_COMPONENTS.items():
        for component_id in collector.get(kind) or {}:
            kind_type = (kind, _type(component_id))
            assert kind_type not in COLLECTOR_DEPRECATED, (
                f"{kind} {component_id}: deprecated, use {COLLECTOR_DEPRECATED[kind_type]}"
            )
            assert _type(component_id) in allowed, f"{kind} {component_id} is not an otelcol-contrib 0.159.0 type"


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
    assert 'trace_id="$${__trace.traceId}"' in tempo["tracesToLogsV2"]["query"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    (derived,) = sources["loki"]["jsonData"]["derivedFields"]
    assert (derived["matcherType"], derived["matcherRegex"], derived["datasourceUid"]) == ("label", "trace_id", "tempo")
    for source in sources.values():
        host = urlsplit(source["url"])
        assert host.hostname in load_yaml(COMPOSE)["services"], source["url"]


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
