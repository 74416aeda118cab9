#!/usr/bin/env python3
"""Regenerates the upstream facts in this folder from upstream git repositories.

The stack's configs are checked in CI (tests/test_stack_upstream.py) against facts read
from the upstream releases they run with: the key structure of Tempo's and Loki's config
at their pinned tags, the component types of the Collector release at its pinned version,
the fields Grafana's Tempo data source puts in its table frames, and where each image
digest came from. CI has no network, so the facts are committed; this script rebuilds
them from bare clones (any clone works; the session tool `fetch github:<owner>/<name>`
leaves them in /work/.mirror/<owner>+<name>/repo; UPSTREAM_MIRROR=<dir> points elsewhere):

    python3 deploy/upstream-facts/regenerate.py               # every file
    python3 deploy/upstream-facts/regenerate.py tempo loki    # some of them
    python3 deploy/upstream-facts/regenerate.py --check       # exit 1 when a file would change

The versions come from docker-compose.yml (the image tags), so bumping an image and
running this script moves the facts with it; the test fails while they disagree.

Repositories too large to clone here (opentelemetry-collector-contrib, grafana) are read
from a tag checkout when one is given (--contrib-git-dir, --grafana-git-dir); otherwise
their facts come from snapshots.json, which says where each was read and that it is not
tag-exact. Needs only Python 3.11+, PyYAML and git.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from goconfig import Git, Program, Walker  # noqa: E402

ROOT = HERE.parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# Where the bare clones are: <mirror>/<owner>+<name>/repo (the layout `fetch` leaves).
MIRROR = Path(os.environ.get("UPSTREAM_MIRROR", "/work/.mirror"))
SNAPSHOTS = HERE / "snapshots.json"

# Tempo rejects override keys that no registered extension claims (modules/overrides/
# extension.go, processExtensions): its inline map is closed in stock Tempo.
TEMPO_CLOSED_INLINE = frozenset({"github.com/grafana/tempo/modules/overrides.Overrides"})

# Where each pinned image's digest is read (repository, ref, file), in order of preference.
# A digest is recorded only when upstream material pins that exact tag with it.
IMAGE_SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "grafana/grafana": [("grafana/loki", "HEAD", "production/docker/docker-compose.yaml")],
    "grafana/loki": [("grafana/loki", "HEAD", "production/docker/docker-compose.yaml")],
    "prom/prometheus": [
        ("grafana/loki", "HEAD", "production/docker/docker-compose.yaml"),
        (
            "open-telemetry/opentelemetry-java-examples",
            "renovate/all-patch-and-minor-versions",
            "otlp/docker/docker-compose.yaml",
        ),
    ],
    "otel/opentelemetry-collector-contrib": [
        (
            "open-telemetry/opentelemetry-java-examples",
            "renovate/all-patch-and-minor-versions",
            "javaagent/docker-compose.yml",
        ),
    ],
    "grafana/tempo": [
        ("grafana/tempo", "main", "example/docker-compose/single-binary/docker-compose.yaml"),
        ("grafana/tempo", "renovate/main-docker", "example/docker-compose/single-binary/docker-compose.yaml"),
    ],
}
# Official Docker images: their tags are listed in docker-library/official-images; their
# digests change whenever the image is rebuilt on a new base, so no upstream file pins one.
OFFICIAL_IMAGES = ("postgres", "busybox", "python")


def mirror(repo: str) -> str:
    return str(MIRROR / repo.replace("/", "+") / "repo")


def compose_images() -> dict[str, tuple[str, str]]:
    """image name -> (tag, digest or '') as pinned in docker-compose.yml and the Dockerfile."""
    found: dict[str, tuple[str, str]] = {}
    text = COMPOSE.read_text(encoding="utf-8") + (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for match in re.finditer(r"(?:image:|FROM)\s+([a-z0-9./-]+):([A-Za-z0-9._-]+)(?:@(sha256:[0-9a-f]{64}))?", text):
        found[match.group(1)] = (match.group(2), match.group(3) or "")
    found.pop("orchestrator", None)  # built here (docker-compose.yml `build:`), not pulled
    return found


def stamp(git: Git, repo: str) -> dict[str, str]:
    return {"repository": repo, "ref": git.ref, "commit": git.commit, "commit_date": git.date()}


# -- Tempo and Loki ----------------------------------------------------------------------


def config_facts(repo: str, tag: str, root_package: str, closed: frozenset[str] = frozenset()) -> dict[str, Any]:
    git = Git(mirror(repo), tag)
    program = Program(git)
    schema = Walker(program, closed).root(f"{program.module}/{root_package}", "Config")
    return {
        "upstream": stamp(git, repo),
        "what": (
            "YAML keys of the config structs (go-yaml v2 UnmarshalStrict), from the root Config "
            f"of {root_package}. A ref is '' (any value), a struct id, 'map:<ref>' or 'list:<ref>'; "
            "'*' is any further key."
        ),
        "root": schema.root,
        "structs": dict(sorted(schema.structs.items())),
    }


def tempo(tag: str) -> dict[str, Any]:
    facts = config_facts("grafana/tempo", f"v{tag}", "cmd/tempo/app", TEMPO_CLOSED_INLINE)
    git = Git(mirror("grafana/tempo"), f"v{tag}")
    names = dict(
        re.findall(r"(\w+Name)\s*=\s*\"([^\"]+)\"", git.read("modules/generator/processor/processor_names.go"))
    )
    listed = re.search(
        r"SupportedProcessors = \[\]string\{(.*?)\}", git.read("modules/generator/validation/fields.go"), re.S
    )
    assert listed, "SupportedProcessors not found"
    facts["metrics_generator_processors"] = [names[n] for n in re.findall(r"processor\.(\w+)", listed.group(1))]
    facts["metrics_generator_processors_source"] = "modules/generator/validation/fields.go SupportedProcessors"
    return facts


def loki(tag: str) -> dict[str, Any]:
    return config_facts("grafana/loki", f"v{tag}", "pkg/loki")


# -- the Collector ---------------------------------------------------------------------

CONTRIB_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/"
CORE_MODULE = "go.opentelemetry.io/collector/"


def otelcol(version: str, contrib_git_dir: str | None) -> dict[str, Any]:
    releases = Git(mirror("open-telemetry/opentelemetry-collector-releases"), f"v{version}")
    manifest = yaml.safe_load(releases.read("distributions/otelcol-contrib/manifest.yaml"))
    core = Git(mirror("open-telemetry/opentelemetry-collector"), f"v{version}")
    contrib = Git(contrib_git_dir, f"v{version}") if contrib_git_dir else None
    snapshot = json.loads(SNAPSHOTS.read_text(encoding="utf-8"))["otelcol_contrib_metadata"]
    kinds = ("receivers", "processors", "exporters", "connectors", "extensions")
    modules = {kind: sorted(entry["gomod"].split()[0] for entry in manifest.get(kind) or []) for kind in kinds}
    components: dict[str, dict[str, dict[str, str]]] = {kind: {} for kind in kinds}
    for kind in kinds:
        for module in modules[kind]:
            metadata, source = None, ""
            if module.startswith(CORE_MODULE):
                path = module.removeprefix(CORE_MODULE) + "/metadata.yaml"
                if path in core.files:
                    metadata, source = (
                        yaml.safe_load(core.read(path)),
                        f"open-telemetry/opentelemetry-collector@v{version}",
                    )
            elif contrib is not None and module.startswith(CONTRIB_MODULE):
                path = module.removeprefix(CONTRIB_MODULE) + "/metadata.yaml"
                if path in contrib.files:
                    metadata, source = (
                        yaml.safe_load(contrib.read(path)),
                        f"open-telemetry/opentelemetry-collector-contrib@v{version}",
                    )
            elif module in snapshot:
                metadata, source = snapshot[module], snapshot[module]["source"]
            if metadata is None:
                continue
            entry = {"module": module, "source": source}
            if metadata.get("deprecated_type"):
                entry["deprecated_type"] = metadata["deprecated_type"]
            components[kind][metadata["type"]] = entry
    return {
        "release": stamp(releases, "open-telemetry/opentelemetry-collector-releases"),
        "core": stamp(core, "open-telemetry/opentelemetry-collector"),
        "what": (
            "modules: every component module of otelcol-contrib (distributions/otelcol-contrib/manifest.yaml). "
            "components: type names (metadata.yaml `type`, `deprecated_type`) of the modules whose metadata "
            "was read: every core one; contrib ones from a contrib checkout or snapshots.json."
        ),
        "modules": modules,
        "components": components,
    }


# -- Grafana ---------------------------------------------------------------------------


def frame_fields(source: str, function: str) -> list[str]:
    """The fixed field names of the first data frame built in ``function``."""
    start = (
        source.index(f"function {function}") if f"function {function}" in source else source.index(f"const {function}")
    )
    body = source[start:]
    fields = body[body.index("fields: [") :]
    depth, end = 0, 0
    for index, char in enumerate(fields):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0 and char == "]":
            end = index
            break
    block = fields[:end]
    names = []
    depth = 0
    for match in re.finditer(r"[\[\]{}]|name: '(\w+)'|\.\.\.", block):
        piece = match.group()
        if piece in "[{":
            depth += 1
        elif piece in "]}":
            depth -= 1
        elif piece == "...":
            names.append("<span attributes>")
        elif depth == 2:  # a field object directly inside `fields: [`
            names.append(match.group(1))
    return names


def grafana(version: str, grafana_git_dir: str | None) -> dict[str, Any]:
    if grafana_git_dir is None:
        return dict(json.loads(SNAPSHOTS.read_text(encoding="utf-8"))["grafana_tempo_frames"])
    git = Git(grafana_git_dir, f"v{version}")
    source = git.read("public/app/plugins/datasource/tempo/resultTransformer.ts")
    return {
        "upstream": stamp(git, "grafana/grafana"),
        "source": "public/app/plugins/datasource/tempo/resultTransformer.ts",
        "traces": frame_fields(source, "createTableFrameFromTraceQlQuery"),
        "traces_nested": frame_fields(source, "traceSubFrame"),
        "spans": frame_fields(source, "createTableFrameFromTraceQlQueryAsSpans"),
    }


# -- images ----------------------------------------------------------------------------


def images() -> dict[str, Any]:
    pinned = compose_images()
    facts: dict[str, Any] = {}
    for name, (tag, _) in sorted(pinned.items()):
        entry: dict[str, Any] = {"tag": tag, "digest": None, "source": None}
        for repo, ref, path in IMAGE_SOURCES.get(name, []):
            git = Git(mirror(repo), ref)
            if path not in git.files:
                continue
            match = re.search(rf"{re.escape(name)}:{re.escape(tag)}@(sha256:[0-9a-f]{{64}})", git.read(path))
            if match:
                entry["digest"] = match.group(1)
                entry["source"] = {**stamp(git, repo), "path": path}
                break
        if name in OFFICIAL_IMAGES:
            git = Git(mirror("docker-library/official-images"), "HEAD")
            tags = "\n".join(line for line in git.read(f"library/{name}").splitlines() if line.startswith("Tags:"))
            entry["tag_listed"] = bool(re.search(rf"(?:Tags:|,)\s*{re.escape(tag)}(?:,|$)", tags, re.M))
            entry["tag_source"] = {**stamp(git, "docker-library/official-images"), "path": f"library/{name}"}
        if entry["digest"] is None:
            entry["why_no_digest"] = (
                "official image, rebuilt in place on new bases: no upstream file pins a digest"
                if name in OFFICIAL_IMAGES
                else "no upstream repository read here pins this tag with a digest"
            )
        facts[name] = entry
    return {
        "what": "image tags of docker-compose.yml and the Dockerfile, and where each digest was read",
        "images": facts,
    }


# -- main ------------------------------------------------------------------------------


def render(facts: dict[str, Any]) -> str:
    """JSON with one struct (or list) per line: small diffs when upstream changes."""
    lines = ["{"]
    items = list(facts.items())
    for index, (key, value) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        if isinstance(value, dict) and value and all(isinstance(v, dict | list) for v in value.values()):
            inner = [f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in value.items()]
            lines.append(f"  {json.dumps(key)}: {{\n" + ",\n".join(inner) + f"\n  }}{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="*", default=["tempo", "loki", "otelcol", "grafana", "images"])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file would change (dates aside)")
    parser.add_argument("--contrib-git-dir", help="a clone of opentelemetry-collector-contrib with its tags")
    parser.add_argument("--grafana-git-dir", help="a clone of grafana/grafana with its tags")
    args = parser.parse_args(argv)
    pinned = compose_images()
    builders = {
        "tempo": lambda: tempo(pinned["grafana/tempo"][0]),
        "loki": lambda: loki(pinned["grafana/loki"][0]),
        "otelcol": lambda: otelcol(pinned["otel/opentelemetry-collector-contrib"][0], args.contrib_git_dir),
        "grafana": lambda: grafana(pinned["grafana/grafana"][0], args.grafana_git_dir),
        "images": images,
    }
    stale = []
    for name in args.files:
        facts = {"generated_on": dt.date.today().isoformat(), "generated_by": "deploy/upstream-facts/regenerate.py"}
        facts.update(builders[name]())
        path = HERE / f"{name}.json"
        if args.check:
            old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            old.pop("generated_on", None)
            facts.pop("generated_on")
            if json.loads(render(facts)) != old:
                stale.append(path.name)
            continue
        path.write_text(render(facts), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("would change: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
