"""``dependencies``: the declared dependencies of every manifest in the project.

Understands ``pyproject.toml`` (PEP 621 and Poetry), ``requirements*.txt`` and
``package.json``. A manifest that cannot be parsed fails the module with a
:class:`ModuleError`: its dependencies are unknowable, and a partial list would
read as a complete one.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext, ModuleError
from orchestrator.modules.index import FileEntry
from orchestrator.modules.job_files import ScanResult
from orchestrator.modules.scan import FileContent

__all__ = ["DependenciesModule", "MalformedManifest", "parse_requirement", "read_manifest"]

#: A PEP 508 requirement: a name, optional [extras], then a version spec or "@ url",
#: then an optional "; marker". The spec must start like one, so that a bare URL
#: line ("https://...") is not misread as a package named "https".
_REQUIREMENT: Final = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?P<extras>\[[^\]]*\])?\s*"
    r"(?P<spec>(?:[<>=!~@(].*?)?)\s*"
    r"(?:;.*)?$"
)


class MalformedManifest(Exception):
    """A manifest's syntax or shape is invalid (turned into a ModuleError with its path)."""


@dataclass(frozen=True)
class Dependency:
    name: str
    spec: str
    group: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "spec": self.spec, "group": self.group}


def parse_requirement(text: str, group: str) -> Dependency | None:
    """A PEP 508 string as a Dependency, or ``None`` if it does not name a package."""
    match = _REQUIREMENT.match(text.strip())
    if match is None:
        return None
    spec = match["spec"].strip()
    if spec.startswith("(") and spec.endswith(")"):
        spec = spec[1:-1].strip()  # the legacy "name (>=1.0)" form
    return Dependency(match["name"], spec, group)


def _requirement_lines(text: str) -> Iterator[str]:
    """Logical requirement lines: continuations joined, comments and options dropped."""
    for line in re.sub(r"\\\r?\n", "", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        # Per-requirement options (name==1.0 --hash=sha256:...) are not part of the spec.
        line = re.split(r"\s+--?[A-Za-z]", line, maxsplit=1)[0].strip()
        # Option lines (-r other.txt, -e ./pkg, --index-url ...) are not dependencies.
        if line and not line.startswith("-"):
            yield line


def parse_requirements_txt(data: bytes) -> list[Dependency]:
    # Lines that name no package (bare URLs, local paths) are skipped, not fatal:
    # pip accepts them, so they are not a malformed file.
    parsed = (parse_requirement(line, "main") for line in _requirement_lines(_decode(data)))
    return [dependency for dependency in parsed if dependency is not None]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedManifest(f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _table(document: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """``document[k1][k2]...`` if every level is a table, ``{}`` if absent."""
    node = document
    for depth, key in enumerate(keys):
        child = node.get(key, {})
        if not isinstance(child, Mapping):
            raise MalformedManifest(f"[{'.'.join(keys[: depth + 1])}] must be a table")
        node = child
    return node


def _pep508_list(value: Any, where: str, group: str) -> list[Dependency]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedManifest(f"{where} must be a list of strings")
    parsed = (parse_requirement(item, group) for item in value)
    return [dependency for dependency in parsed if dependency is not None]


def _poetry_spec(value: Any) -> str:
    # Poetry allows "^1.2", {version = "^1.2", extras = [...]}, {git = "..."} or a
    # list of such tables (per-platform constraints).
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("version", "git", "path", "url"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return ""
    if isinstance(value, list):
        return " || ".join(filter(None, (_poetry_spec(item) for item in value)))
    return ""


def _poetry_table(table: Mapping[str, Any], group: str) -> list[Dependency]:
    # "python" in Poetry dependencies is the interpreter constraint, not a package.
    return [Dependency(name, _poetry_spec(spec), group) for name, spec in table.items() if name.lower() != "python"]


def parse_pyproject(data: bytes) -> list[Dependency]:
    try:
        document = tomllib.loads(_decode(data))
    except tomllib.TOMLDecodeError as exc:
        raise MalformedManifest(str(exc)) from exc
    project = _table(document, "project")
    found = _pep508_list(project.get("dependencies", []), "[project].dependencies", "main")
    for group, items in _table(document, "project", "optional-dependencies").items():
        found += _pep508_list(items, f"[project.optional-dependencies].{group}", group)
    found += _poetry_table(_table(document, "tool", "poetry", "dependencies"), "main")
    found += _poetry_table(_table(document, "tool", "poetry", "dev-dependencies"), "dev")
    for group in _table(document, "tool", "poetry", "group"):
        found += _poetry_table(_table(document, "tool", "poetry", "group", group, "dependencies"), group)
    return found


def _string_map(value: Any, where: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise MalformedManifest(f'"{where}" must be an object of strings')
    return value


def parse_package_json(data: bytes) -> list[Dependency]:
    try:
        document = json.loads(_decode(data))
    except json.JSONDecodeError as exc:
        raise MalformedManifest(str(exc)) from exc
    if not isinstance(document, dict):
        raise MalformedManifest("the top level must be an object")
    found: list[Dependency] = []
    for key, group in (("dependencies", "main"), ("devDependencies", "dev")):
        for name, spec in _string_map(document.get(key, {}), key).items():
            found.append(Dependency(name, spec, group))
    return found


Parser = Callable[[bytes], list[Dependency]]


def manifest_kind(name: str) -> tuple[str, Parser] | None:
    name = name.lower()
    if name == "pyproject.toml":
        return "pyproject", parse_pyproject
    if name == "package.json":
        return "package.json", parse_package_json
    if name.startswith("requirements") and name.endswith(".txt"):
        return "requirements", parse_requirements_txt
    return None


_SKIPPED: Final = "unreadable or too large"


def read_manifest(relpath: str, kind: str, parse: Parser, data: bytes) -> dict[str, Any]:
    """One manifest's summary; ``malformed`` (the reason) when it cannot be parsed."""
    try:
        dependencies = parse(data)
    except MalformedManifest as exc:
        return {"path": relpath, "kind": kind, "malformed": str(exc)}
    return {
        "path": relpath,
        "kind": kind,
        "count": len(dependencies),
        "dependencies": [dependency.as_dict() for dependency in dependencies],
    }


class _ManifestAnalyzer(FileAnalyzer[dict[str, Any]]):
    # A manifest with a NUL byte is malformed, not skipped; one over the size cap is
    # listed as skipped, so the summary shows it exists.
    include_binary = True
    include_large = True
    binary_data = True

    def select(self, entry: FileEntry) -> bool:
        return manifest_kind(entry.name) is not None

    def analyze(self, entry: FileEntry, content: FileContent) -> dict[str, Any] | None:
        found = manifest_kind(entry.name)
        assert found is not None
        kind, parse = found
        if content.data is None:
            return {"path": entry.relpath, "kind": kind, "skipped": _SKIPPED}
        return read_manifest(entry.relpath, kind, parse, content.data)


def summarise(result: ScanResult[dict[str, Any]], selected: list[FileEntry], module: str) -> dict[str, Any]:
    by_path = {entry.relpath: manifest for entry, manifest in result.results}
    manifests: list[dict[str, Any]] = []
    stats = result.stats
    for entry in selected:
        manifest = by_path.get(entry.relpath)
        if manifest is None:  # unreadable: counted by the scan
            kind = manifest_kind(entry.name)
            manifest = {"path": entry.relpath, "kind": kind[0] if kind else "", "skipped": _SKIPPED}
        elif "malformed" in manifest:
            raise ModuleError(f"malformed manifest {entry.relpath}: {manifest['malformed']}", module=module)
        elif "skipped" in manifest:
            stats.skipped_large += 1
        manifests.append(manifest)
    parsed = [manifest for manifest in manifests if "skipped" not in manifest]
    names = {_normalise(dep["name"]) for manifest in parsed for dep in manifest["dependencies"]}
    return {
        "manifest_count": len(parsed),
        "total_dependencies": sum(manifest["count"] for manifest in parsed),
        "unique_dependencies": len(names),
        "manifests": manifests,
        "walk": stats.as_dict(),
    }


def _normalise(name: str) -> str:
    # PEP 503: Foo_Bar, foo-bar and foo.bar are the same package.
    return re.sub(r"[-_.]+", "-", name).lower()


class DependenciesModule(BaseModule):
    name: ClassVar[str] = "dependencies"
    option_names: ClassVar[frozenset[str] | None] = frozenset()  # takes no options
    version: ClassVar[str] = "1.1.0"
    expected_runtime: ClassVar[float] = 0.5
    timeout: ClassVar[float] = 30.0
    description: ClassVar[str] = "Lists dependencies from pyproject.toml, requirements*.txt and package.json."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        analyzer = _ManifestAnalyzer()
        result = await context.scan(analyzer)
        selected = [entry for entry in await context.index() if analyzer.select(entry)]
        return summarise(result, selected, context.module)
