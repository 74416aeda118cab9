"""The stack's configs against the upstream releases they run with.

Tempo and Loki refuse an unknown key at start-up, the Collector an unknown component,
and Grafana silently ignores a link override on a field its data source never produces.
None of them runs here (no Docker), so these tests check our files against facts read
from the upstream sources at the pinned versions, committed in deploy/upstream-facts/
(regenerate them with deploy/upstream-facts/regenerate.py after bumping an image).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from stack_helpers import (
    COLLECTOR,
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    dashboards,
    facts,
    iter_panels,
    load_yaml,
    unknown_config_keys,
)

KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
# Each facts file names the upstream it was read from: image -> (facts file, repository).
PINNED = {
    "grafana/tempo": ("tempo", "grafana/tempo"),
    "grafana/loki": ("loki", "grafana/loki"),
    "otel/opentelemetry-collector-contrib": ("otelcol", "open-telemetry/opentelemetry-collector-releases"),
}
IMAGE_LINE = re.compile(r"(?:image:|FROM)\s+([a-z0-9./-]+):([A-Za-z0-9._-]+)(?:@(sha256:[0-9a-f]{64}))?")


@pytest.fixture(scope="module")
def tempo_facts() -> dict[str, Any]:
    return facts("tempo")


@pytest.fixture(scope="module")
def loki_facts() -> dict[str, Any]:
    return facts("loki")


@pytest.fixture(scope="module")
def tempo_config() -> dict[str, Any]:
    return dict(load_yaml(DEPLOY / "tempo/tempo.yaml"))


# -- the facts themselves ----------------------------------------------------------------


def _pinned_images() -> dict[str, tuple[str, str | None]]:
    text = COMPOSE.read_text(encoding="utf-8") + DOCKERFILE.read_text(encoding="utf-8")
    return {m[1]: (m[2], m[3]) for m in IMAGE_LINE.finditer(text) if m[1] != "orchestrator"}


def test_facts_are_dated_and_name_their_upstream_commit() -> None:
    for name in ("tempo", "loki", "otelcol", "images", "grafana"):
        data = facts(name)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["generated_on"]), name
        assert data["generated_by"] == "deploy/upstream-facts/regenerate.py"
    for name in ("tempo", "loki"):
        assert re.fullmatch(r"[0-9a-f]{40}", facts(name)["upstream"]["commit"])
    assert re.fullmatch(r"[0-9a-f]{40}", facts("otelcol")["release"]["commit"])


def test_facts_were_read_at_the_pinned_versions() -> None:
    """Bumping an image without regenerating the facts fails here."""
    images = _pinned_images()
    for image, (name, repository) in PINNED.items():
        data = facts(name)
        upstream = data["upstream"] if "upstream" in data else data["release"]
        assert upstream["repository"] == repository
        assert upstream["ref"] == f"v{images[image][0]}", f"{name}.json is for {upstream['ref']}, {image} is pinned"
    assert facts("otelcol")["core"]["ref"] == f"v{images['otel/opentelemetry-collector-contrib'][0]}"


def test_every_pinned_digest_is_the_one_upstream_material_pins() -> None:
    images = _pinned_images()
    recorded = facts("images")["images"]
    assert set(images) == set(recorded), "regenerate deploy/upstream-facts/images.json"
    for image, (tag, digest) in images.items():
        entry = recorded[image]
        assert entry["tag"] == tag, image
        assert digest == entry["digest"], f"{image}: pinned {digest}, upstream material pins {entry['digest']}"
        if digest is None:
            assert entry["why_no_digest"], image
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", entry["source"]["commit"]), image
        if "tag_listed" in entry:
            assert entry["tag_listed"] is True, f"{image}:{tag} is not in docker-library/official-images"


def test_every_image_line_says_where_its_digest_came_from() -> None:
    recorded = facts("images")["images"]
    for path in (COMPOSE, DOCKERFILE):
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            match = IMAGE_LINE.search(line)
            if not match or match[1] == "orchestrator":
                continue
            comment = []
            for above in reversed(lines[:index]):
                if not above.strip().startswith("#"):
                    break
                comment.insert(0, above)
            text = " ".join(comment)
            if match[3]:
                source = recorded[match[1]]["source"]
                assert "Digest:" in text, f"{path.name}: {line.strip()} has no comment naming its source"
                where = f"{path.name}: {line.strip()}"
                assert source["repository"] in text, f"{where}: comment lacks {source['repository']}"
                assert source["commit"][:8] in text, f"{path.name}: {line.strip()}: comment lacks the commit"
            else:
                assert "No digest" in text or "no digest" in text.lower(), f"{path.name}: {line.strip()}"


# -- Tempo -------------------------------------------------------------------------------


def test_tempo_config_uses_only_keys_tempo_knows(tempo_config: dict[str, Any], tempo_facts: dict[str, Any]) -> None:
    assert unknown_config_keys(tempo_config, tempo_facts) == []


def test_the_tempo_check_catches_the_keys_tempo_3_removed(
    tempo_config: dict[str, Any], tempo_facts: dict[str, Any]
) -> None:
    """The config that stopped Tempo 3.0 at start-up ("field traces_storage not found in
    type generator.Config"), and a misspelt key under the scoped overrides."""
    broken = copy.deepcopy(tempo_config)
    broken["metrics_generator"]["traces_storage"] = {"path": "/var/tempo/generator/traces"}
    broken["metrics_generator"]["processor"]["local_blocks"] = {"filter_server_spans": False}
    broken["overrides"]["defaults"]["metrics_generatr"] = {}
    broken["compactor"] = {}  # removed in 3.0 too
    assert sorted(unknown_config_keys(broken, tempo_facts)) == [
        "compactor",
        "metrics_generator.processor.local_blocks",
        "metrics_generator.traces_storage",
        "overrides.defaults.metrics_generatr",
    ]


def test_tempo_metrics_generator_processors_exist(tempo_config: dict[str, Any], tempo_facts: dict[str, Any]) -> None:
    known = set(tempo_facts["metrics_generator_processors"])
    assert "local-blocks" not in known  # removed in 3.0 (upstream #6555)
    assert {"service-graphs", "span-metrics"} <= known
    processors = tempo_config["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert set(processors) <= known, f"unknown processors: {set(processors) - known}"


def test_tempo_pads_trace_ids_and_maps_webhook_peers(tempo_config: dict[str, Any]) -> None:
    assert tempo_config["overrides"]["defaults"]["read"]["left_pad_trace_ids"] is True
    peers = tempo_config["metrics_generator"]["processor"]["service_graphs"]["peer_attributes"]
    # Setting the list replaces Tempo's defaults: keep them, add the webhook client's.
    assert peers[:3] == ["peer.service", "db.name", "db.system"]
    assert "server.address" in peers


# -- Loki --------------------------------------------------------------------------------


def test_loki_config_uses_only_keys_loki_knows(loki_facts: dict[str, Any]) -> None:
    assert unknown_config_keys(load_yaml(DEPLOY / "loki/loki.yaml"), loki_facts) == []


def test_the_loki_check_catches_unknown_keys(loki_facts: dict[str, Any]) -> None:
    broken = copy.deepcopy(load_yaml(DEPLOY / "loki/loki.yaml"))
    broken["limits_config"]["allow_structured_metdata"] = True
    broken["schema_config"]["configs"][0]["indx"] = {}
    broken["common"] = "filesystem"
    assert unknown_config_keys(broken, loki_facts) == [
        "common: a mapping is expected here",
        "schema_config.configs[0].indx",
        "limits_config.allow_structured_metdata",
    ]


# -- the Collector -----------------------------------------------------------------------


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def collector_problems(config: dict[str, Any], otelcol: dict[str, Any]) -> list[str]:
    problems = []
    for kind in KINDS:
        known = otelcol["components"][kind]
        deprecated = {entry.get("deprecated_type"): name for name, entry in known.items()}
        for component_id in config.get(kind) or {}:
            name = _type(component_id)
            if name in deprecated:
                problems.append(f"{kind} {component_id}: deprecated name, use {deprecated[name]}")
            elif name not in known:
                problems.append(f"{kind} {component_id}: not a component of this release")
            elif known[name]["module"] not in otelcol["modules"][kind]:
                problems.append(f"{kind} {component_id}: its module is not in the release manifest")
    return problems


def test_collector_components_are_in_the_release_under_their_current_names() -> None:
    otelcol = facts("otelcol")
    assert collector_problems(load_yaml(COLLECTOR), otelcol) == []


def test_the_collector_check_catches_old_and_unknown_names() -> None:
    otelcol = facts("otelcol")
    config = copy.deepcopy(load_yaml(COLLECTOR))
    config["exporters"]["otlp/tempo"] = config["exporters"].pop("otlp_grpc/tempo")
    config["exporters"]["otlphttp/loki"] = config["exporters"].pop("otlp_http/loki")
    config["connectors"]["spanmetrics"] = config["connectors"].pop("span_metrics")
    config["exporters"]["loki"] = {}
    assert sorted(collector_problems(config, otelcol)) == [
        "connectors spanmetrics: deprecated name, use span_metrics",
        "exporters loki: not a component of this release",
        "exporters otlp/tempo: deprecated name, use otlp_grpc",
        "exporters otlphttp/loki: deprecated name, use otlp_http",
    ]


def test_the_release_manifest_has_the_modules_we_rely_on() -> None:
    modules = facts("otelcol")["modules"]
    assert "go.opentelemetry.io/collector/exporter/otlpexporter" in modules["exporters"]
    assert "go.opentelemetry.io/collector/receiver/otlpreceiver" in modules["receivers"]
    assert "github.com/open-telemetry/opentelemetry-collector-contrib/connector/spanmetricsconnector" in (
        modules["connectors"]
    )
    assert "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension" in (
        modules["extensions"]
    )


# -- Grafana: link overrides match fields the Tempo data source produces -----------------


def _tempo_tables() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for name, board in dashboards().items():
        for panel in iter_panels(board["panels"]):
            for target in panel.get("targets", []):
                if (target.get("datasource") or {}).get("uid") == "tempo":
                    found.append((f"{name}: {panel['title']!r}", panel, target))
    return found


def _frame_fields(target: dict[str, Any]) -> set[str]:
    """Fields of the frame Grafana builds for this Tempo query: the fixed ones, and one
    per span attribute the query returns (those it filters on or selects)."""
    frames = facts("grafana")
    table = target["tableType"]
    fixed = frames[table] + (frames["traces_nested"] if table == "traces" else [])
    attributes = set(re.findall(r"\bspan\.([A-Za-z_][A-Za-z0-9_.]*)", target["query"]))
    return (set(fixed) - {"<span attributes>"}) | attributes


def test_grafana_frame_facts_have_what_the_links_need() -> None:
    frames = facts("grafana")
    assert "traceID" in frames["traces"]
    assert "traceID" not in frames["spans"]  # the bug: a spans table has no traceID field
    assert {"traceIdHidden", "spanID"} <= set(frames["spans"])


def test_every_link_override_matches_a_field_the_data_source_produces() -> None:
    tables = _tempo_tables()
    assert {t["tableType"] for _, _, t in tables} == {"traces", "spans"}
    for where, panel, target in tables:
        fields = _frame_fields(target)
        overrides = panel["fieldConfig"]["overrides"]
        linked = [o for o in overrides if any(p["id"] == "links" for p in o["properties"])]
        assert linked, f"{where}: no trace links"
        for override in overrides:
            matcher = override["matcher"]
            assert matcher["id"] == "byName", f"{where}: {matcher}"
            assert matcher["options"] in fields, f"{where}: no field {matcher['options']!r} in {sorted(fields)}"
            assert matcher["options"] != "traceIdHidden", f"{where}: links on a hidden field never show"
        for link in (link for o in linked for p in o["properties"] if p["id"] == "links" for link in p["value"]):
            for field in re.findall(r"__data\.fields\.(\w+)", json.dumps(link)):
                assert field in fields, f"{where}: link reads field {field!r}, which the frame lacks"


def test_the_link_check_catches_the_traceid_override_on_a_spans_table() -> None:
    """The drill-down as it was: a traceID override on a `spans` table matched nothing."""
    _, panel, target = next(t for t in _tempo_tables() if t[2]["tableType"] == "spans")
    assert "traceID" not in _frame_fields(target)
    assert panel["fieldConfig"]["overrides"][0]["matcher"]["options"] == "spanID"
