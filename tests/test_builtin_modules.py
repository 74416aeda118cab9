"""The built-in analysis modules and the shared file walker, on real temporary trees."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.modules import files
from orchestrator.modules.base import BaseModule, ModuleCancelled, ModuleContext, ModuleError
from orchestrator.modules.builtin import (
    BUILTIN_MODULES,
    DependenciesModule,
    InventoryModule,
    PythonSyntaxModule,
    SecretsModule,
    TodosModule,
    secrets_scan,
)
from orchestrator.modules.builtin.secrets_scan import redact
from orchestrator.modules.files import WalkStats, iter_files, read_text
from orchestrator.modules.job_files import JobFiles
from orchestrator.modules.progress import ModuleProgress, ProgressReporter

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: The unprivileged user the unreadable-file tests read as when they run as root.
NOBODY = 65534

# Fake credentials, assembled at runtime so this file itself does not trip secret scanners.
AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5" * 3 + "F6g7H8"
SLACK_TOKEN = "xoxb-" + "123456789012-" + "AbCdEfGhIjKl"
JWT = "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0" + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PASSWORD = "hunter2-correct-horse"
KEY_BODY = "MIIEowIBAAKCAQEA" + "x7Yq" * 10


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def make_context(source: Path, module: str = "test") -> ModuleContext:
    return ModuleContext(job_id="j", project_id="p", source=source, module=module, attempt=1)


def write(root: Path, relpath: str, content: str | bytes) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@contextmanager
def no_permissions(path: Path) -> Iterator[None]:
    """chmod 000 for the duration, restored so tmp_path can be cleaned up. Root reads
    through that (CAP_DAC_OVERRIDE), so as root the block also runs with nobody's
    effective user and group: the read fails with EACCES for real, as for anyone else."""
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        with _unprivileged():
            yield
    finally:
        path.chmod(stat.S_IMODE(mode))


@contextmanager
def _unprivileged() -> Iterator[None]:
    if not IS_ROOT:
        yield
        return
    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError as exc:  # root without CAP_SETUID (a locked-down container)
        os.setegid(0)
        pytest.skip(f"running as root without the right to become nobody ({exc}): chmod 000 cannot be tested")
    try:
        yield
    finally:
        os.seteuid(0)  # the real and saved user ids stayed root: this gives root back
        os.setegid(0)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A source tree the unprivileged user can reach: as root, outside pytest's own
    temporary directories, which only root may enter (mode 0700)."""
    if not IS_ROOT:
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="orchestrator-unreadable-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


# --- the registry contract -------------------------------------------------------------------


def test_builtin_modules_are_complete_and_well_formed() -> None:
    names = [cls.name for cls in BUILTIN_MODULES]
    assert sorted(names) == ["dependencies", "inventory", "python_syntax", "secrets", "todos"]
    for cls in BUILTIN_MODULES:
        module = cls()
        assert isinstance(module, BaseModule)
        assert module.version == "1.1.0"  # 1.1: the shared index (walk keys ignored, skipped_special)
        assert 0 < module.expected_runtime < module.timeout
        assert module.description
    assert SecretsModule.expected_runtime == 0.5
    assert DependenciesModule.timeout == 30


def test_default_registry_loads_the_builtins() -> None:
    from orchestrator.modules.registry import ModuleRegistry

    registry = ModuleRegistry.default(entry_points=False)
    assert {"inventory", "python_syntax", "secrets", "dependencies", "todos"} <= set(registry.names())


def _module(**attrs: Any) -> BaseModule:
    async def run(self: BaseModule, context: ModuleContext) -> dict[str, Any]:
        return {}

    cls = type("Declared", (BaseModule,), {"name": "declared", "run": run, **attrs})
    return cls()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        # NaN passed the old "<= 0" check and was stored in every result of the module,
        # where it broke `status`, `report` and GET /v1/jobs for the whole store.
        ({"expected_runtime": float("nan")}, "expected_runtime must be above 0 and at most 604800 seconds, not nan"),
        ({"timeout": float("nan")}, "timeout must be above 0 and at most 604800 seconds, not nan"),
        ({"timeout": float("inf")}, "timeout must be above 0 and at most 604800 seconds, not inf"),
        ({"expected_runtime": -float("inf")}, "expected_runtime must be above 0 and at most 604800 seconds"),
        ({"timeout": 0}, "timeout must be above 0 and at most 604800 seconds, not 0"),
        ({"timeout": -1.0}, "timeout must be above 0 and at most 604800 seconds"),
        ({"timeout": 1e306}, "timeout must be above 0 and at most 604800 seconds, not 1e+306"),  # inf in ms
        ({"timeout": 604800.5}, "timeout must be above 0 and at most 604800 seconds"),
        ({"timeout": True}, "timeout must be a number of seconds"),
        ({"timeout": "60"}, "timeout must be a number of seconds"),
        # Names a job could not name: non-ASCII digits and letters (isalnum() said yes).
        ({"name": "café٣"}, "name must be 1-64 ASCII letters, digits, - and _"),
        ({"name": "x²"}, "name must be 1-64 ASCII letters"),
        ({"name": "-lead"}, "name must be 1-64 ASCII letters"),
        ({"name": "a" * 65}, "name must be 1-64 ASCII letters"),
        ({"name": "ok\n"}, "name must be 1-64 ASCII letters"),
    ],
)
def test_a_module_declaring_what_no_job_can_use_is_refused_at_registration(attrs: dict[str, Any], problem: str) -> None:
    from orchestrator.modules.registry import ModuleRegistry

    registry = ModuleRegistry([])
    with pytest.raises(TypeError, match="is not an analysis module") as refused:
        registry.register(_module(**attrs))
    assert problem in str(refused.value)
    assert len(registry) == 0
    registry.register(_module(name="a" * 64, expected_runtime=1e-9, timeout=604800))  # the limits
    # An expected runtime above the timeout stays allowed: modules written against the
    # original interface inherit expected_runtime = 1.0 and may set a shorter timeout.
    registry.register(_module(name="Z9_-", expected_runtime=2, timeout=1))
    assert registry.names() == ["Z9_-", "a" * 64]


# --- the walker ------------------------------------------------------------------------------


def test_walker_skips_tool_directories_and_is_sorted(tmp_path: Path) -> None:
    for relpath in ("b.py", "a.py", "sub/c.py", ".git/config", "node_modules/x/i.js",
                    "__pycache__/m.pyc", ".venv/lib/site.py", ".orchestrator/state.json"):
        write(tmp_path, relpath, "x\n")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_files(tmp_path)]
    assert found == ["a.py", "b.py", "sub/c.py"]


def test_walker_skips_binary_files_when_read(tmp_path: Path) -> None:
    write(tmp_path, "text.txt", "hello\n")
    write(tmp_path, "image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    stats = WalkStats()
    texts = {path.name: read_text(path, stats=stats) for path in iter_files(tmp_path, stats=stats)}
    assert texts == {"image.png": None, "text.txt": "hello\n"}
    assert stats.files_seen == 2
    assert stats.skipped_binary == 1


def test_walker_skips_large_files(tmp_path: Path) -> None:
    write(tmp_path, "small.txt", "ok\n")
    write(tmp_path, "big.txt", "x" * 100)
    stats = WalkStats()
    assert [path.name for path in iter_files(tmp_path, max_file_bytes=10, stats=stats)] == ["small.txt"]
    assert stats.skipped_large == 1
    assert stats.files_seen == 2


def test_walker_survives_a_symlink_loop_and_never_follows_links(tmp_path: Path) -> None:
    write(tmp_path, "sub/real.py", "x = 1\n")
    os.symlink(tmp_path, tmp_path / "loop")
    os.symlink(tmp_path, tmp_path / "sub" / "up")
    os.symlink(tmp_path / "sub" / "real.py", tmp_path / "alias.py")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_files(tmp_path)]
    assert found == ["sub/real.py"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_walker_ignores_fifos_instead_of_blocking_on_them(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    write(tmp_path, "a.txt", "a\n")
    assert [path.name for path in iter_files(tmp_path)] == ["a.txt"]


def test_walker_survives_an_unreadable_file(tree: Path) -> None:
    write(tree, "ok.txt", "fine\n")
    locked = write(tree, "locked.txt", "secret\n")
    stats = WalkStats()
    with no_permissions(locked):
        texts = {path.name: read_text(path, stats=stats) for path in iter_files(tree, stats=stats)}
    assert texts == {"locked.txt": None, "ok.txt": "fine\n"}
    assert stats.skipped_unreadable == 1


def test_walker_survives_an_unreadable_directory(tree: Path) -> None:
    write(tree, "ok.txt", "fine\n")
    write(tree, "locked/inner.txt", "hidden\n")
    stats = WalkStats()
    with no_permissions(tree / "locked"):
        found = [path.name for path in iter_files(tree, stats=stats)]
    assert found == ["ok.txt"]
    assert stats.skipped_unreadable == 1


@pytest.mark.anyio
async def test_modules_survive_an_unreadable_file(tree: Path) -> None:
    write(tree, "a.py", "# TODO: fine\n")
    locked = write(tree, "b.py", "# TODO: locked\n")
    with no_permissions(locked):
        summary = await TodosModule().run(make_context(tree, "todos"))
    assert summary["total"] == 1
    assert summary["walk"]["skipped_unreadable"] == 1


def test_unreadable_entries_are_counted_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip counts, checked without relying on chmod (which root reads through)."""
    write(tmp_path, "ok.txt", "fine\n")
    write(tmp_path, "locked.txt", "secret\n")
    write(tmp_path, "closed/inner.txt", "hidden\n")
    real_open, real_scandir = files.open_regular, os.scandir

    def deny_open(path: Any) -> int:
        if Path(path).name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    def deny_scandir(path: Any) -> Any:
        if Path(path).name == "closed":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(files, "open_regular", deny_open)
    monkeypatch.setattr(os, "scandir", deny_scandir)
    stats = WalkStats()
    texts = {path.name: read_text(path, stats=stats) for path in iter_files(tmp_path, stats=stats)}
    assert texts == {"locked.txt": None, "ok.txt": "fine\n"}
    assert stats.skipped_unreadable == 2  # the file and the directory


@pytest.mark.anyio
async def test_a_module_cancelled_mid_run_stops_early(tmp_path: Path) -> None:
    """Cancelled after its first file (one file per batch here), the scan reads no more."""
    for index in range(20):
        write(tmp_path, f"f{index:02}.py", "x = 1\n")
    ctx = make_context(tmp_path, "secrets")
    updates: list[int] = []
    with anyio.CancelScope() as scope:

        def cancel_after_first(update: ModuleProgress) -> None:
            updates.append(update.done)
            scope.cancel()  # as the runner does when the module times out

        ctx.progress_reporter = ProgressReporter("j", "secrets", cancel_after_first, interval=0)
        async with JobFiles(tmp_path, batch_files=1) as job_files:
            ctx.job_files = job_files
            await SecretsModule().run(ctx)
    assert scope.cancelled_caught
    assert updates == [1]
    assert job_files.opened == 1


def test_walker_stops_when_cancelled(tmp_path: Path) -> None:
    for index in range(10):
        write(tmp_path, f"f{index}.txt", "x\n")
    ctx = make_context(tmp_path)
    walk = iter_files(tmp_path, ctx=ctx)
    assert next(walk).name == "f0.txt"
    ctx.cancel()
    with pytest.raises(ModuleCancelled):
        next(walk)


@pytest.mark.anyio
@pytest.mark.parametrize("module_class", BUILTIN_MODULES, ids=lambda cls: cls.name)
async def test_cancelled_modules_stop(tmp_path: Path, module_class: type[BaseModule]) -> None:
    write(tmp_path, "a.py", "# TODO\n")
    ctx = make_context(tmp_path, module_class.name)
    ctx.cancel()
    with pytest.raises(ModuleError, match="cancelled"):
        await module_class().run(ctx)


@pytest.mark.anyio
@pytest.mark.parametrize("module_class", BUILTIN_MODULES, ids=lambda cls: cls.name)
async def test_missing_source_is_a_module_error(tmp_path: Path, module_class: type[BaseModule]) -> None:
    with pytest.raises(ModuleError, match="does not exist"):
        await module_class().run(make_context(tmp_path / "absent", module_class.name))


@pytest.mark.anyio
@pytest.mark.parametrize("module_class", BUILTIN_MODULES, ids=lambda cls: cls.name)
async def test_summaries_are_json_and_report_walk_stats(
    tmp_path: Path, module_class: type[BaseModule]
) -> None:
    write(tmp_path, "a.py", "x = 1\n")
    write(tmp_path, "blob.bin", b"\x00\x01\x02")
    summary = await module_class().run(make_context(tmp_path, module_class.name))
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary["walk"]) == {
        "files_seen", "skipped_binary", "skipped_unreadable", "skipped_large", "ignored", "skipped_special",
    }


# --- inventory -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_inventory_counts_files_and_lines_by_language(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "a.py": "import os\nprint(os)\n",
        "pkg/b.py": "x = 1",  # no trailing newline: still one line
        "web/app.js": "a\nb\nc\n",
        "web/app.ts": "let x = 1;\n",
        "main.go": "package main\n",
        "lib.rs": "fn main() {}\n",
        "Main.java": "class Main {}\n",
        "c.c": "int x;\n",
        "c.h": "int x;\n",
        "d.cpp": "int y;\n",
        "README.md": "# Title\n\nText\n",
        "conf.toml": "a = 1\n",
        "conf.yml": "a: 1\n",
        "data.json": "{}\n",
        "run.sh": "echo hi\n",
        "notes.txt": "one\ntwo\n",
        "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\n\n",
        "big.txt": "line\n" * 2000,
        ".git/objects/blob": "ignored\n" * 10,
        "node_modules/dep/index.js": "ignored\n" * 10,
    }
    for relpath, content in files.items():
        write(tmp_path, relpath, content)

    summary = await InventoryModule().run(make_context(tmp_path, "inventory"))

    languages = summary["languages"]
    assert languages["Python"] == {"files": 2, "lines": 3, "bytes": len("import os\nprint(os)\n") + 5}
    assert languages["JavaScript"]["lines"] == 3
    for language in ("TypeScript", "Go", "Rust", "Java", "C++", "TOML", "YAML", "JSON", "Shell"):
        assert languages[language]["files"] == 1, language
    assert languages["C"]["files"] == 2
    assert languages["Markdown"]["lines"] == 3
    # notes.txt, big.txt and the binary image; the image has no lines.
    assert languages["other"] == {"files": 3, "lines": 2 + 2000, "bytes": 8 + 10_000 + 12}
    assert summary["total_files"] == 18
    assert summary["total_lines"] == sum(lang["lines"] for lang in languages.values())
    assert summary["total_bytes"] == sum(lang["bytes"] for lang in languages.values())
    largest = summary["largest_files"]
    assert len(largest) == 5
    assert largest[0] == {"path": "big.txt", "bytes": 10_000}
    sizes = [entry["bytes"] for entry in largest]
    assert sizes == sorted(sizes, reverse=True)
    assert summary["walk"]["skipped_binary"] == 1


@pytest.mark.anyio
async def test_inventory_of_a_single_file(tmp_path: Path) -> None:
    source = write(tmp_path, "one.py", "a = 1\nb = 2\n")
    summary = await InventoryModule().run(make_context(source, "inventory"))
    assert summary["total_files"] == 1
    assert summary["languages"] == {"Python": {"files": 1, "lines": 2, "bytes": 12}}
    assert summary["largest_files"] == [{"path": "one.py", "bytes": 12}]


# --- python_syntax ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_python_syntax_reports_errors_as_findings(tmp_path: Path) -> None:
    write(tmp_path, "good.py", "def ok() -> int:\n    return 1\n")
    write(tmp_path, "pkg/bad.py", "def ok():\n    return 1\ndef broken(:\n    pass\n")
    write(tmp_path, "pkg/indent.py", "if True:\nprint('x')\n")
    # Deprecated but legal: must not become an error even where warnings are errors.
    write(tmp_path, "escapes.py", 'pattern = "\\d+"\n')
    write(tmp_path, "latin.py", b"# -*- coding: latin-1 -*-\nname = '\xe9'\n")
    write(tmp_path, "notes.txt", "def broken(:\n")

    summary = await PythonSyntaxModule().run(make_context(tmp_path, "python_syntax"))

    assert summary["files_checked"] == 5
    assert summary["error_count"] == 2
    errors = {error["path"]: error for error in summary["errors"]}
    assert set(errors) == {"pkg/bad.py", "pkg/indent.py"}
    assert errors["pkg/bad.py"]["line"] == 3
    assert errors["pkg/bad.py"]["message"]
    assert errors["pkg/indent.py"]["line"] == 2
    assert summary["errors_truncated"] is False


@pytest.mark.anyio
async def test_python_syntax_caps_the_error_list(tmp_path: Path) -> None:
    for index in range(60):
        write(tmp_path, f"bad{index:02}.py", "x = (\n")
    summary = await PythonSyntaxModule().run(make_context(tmp_path, "python_syntax"))
    assert summary["error_count"] == 60
    assert len(summary["errors"]) == 50
    assert summary["errors_truncated"] is True


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_are_found_and_redacted(tmp_path: Path) -> None:
    write(tmp_path, "config.py", "\n".join([
        "import os",
        f"AWS_ACCESS_KEY_ID = {AWS_KEY!r}",
        f"gh = {GITHUB_TOKEN!r}",
        f"slack = {SLACK_TOKEN!r}",
        f"db_password = {PASSWORD!r}",
        f"session = {JWT!r}",
        'password = "short"',  # under 8 characters: not reported
        "",
    ]))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----\n"
    write(tmp_path, "keys/id_rsa", pem)
    write(tmp_path, "clean.py", "print('nothing to see')\n")

    summary = await SecretsModule().run(make_context(tmp_path, "secrets"))

    assert summary["counts_by_rule"] == {
        "aws_access_key_id": 1, "private_key": 1, "github_token": 1,
        "slack_token": 1, "jwt": 1, "generic_assignment": 1,
    }
    assert summary["total_findings"] == 6
    assert summary["files_scanned"] == 3
    lines = {(finding["path"], finding["rule"]): finding["line"] for finding in summary["findings"]}
    assert lines[("config.py", "aws_access_key_id")] == 2
    assert lines[("config.py", "github_token")] == 3
    assert lines[("config.py", "generic_assignment")] == 5
    assert lines[("keys/id_rsa", "private_key")] == 1
    dumped = json.dumps(summary)
    for raw in (AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN, JWT, PASSWORD, KEY_BODY, "BEGIN RSA PRIVATE KEY"):
        assert raw not in dumped
    assert all(finding["preview"].endswith("****") for finding in summary["findings"])


@pytest.mark.anyio
async def test_a_token_assigned_to_a_secret_name_is_reported_once(tmp_path: Path) -> None:
    write(tmp_path, ".env", f'GITHUB_TOKEN="{GITHUB_TOKEN}"\n')
    summary = await SecretsModule().run(make_context(tmp_path, "secrets"))
    assert summary["total_findings"] == 1
    assert summary["findings"][0]["rule"] == "github_token"


_KEYWORDS = ("password", "PassWd", "passw", "SECRET", "db_secret", "token", "Tokens", "api_key", "APIKEY", "api-key")
_NOISE = ("apix", "capital", "x", " ", "\n", "=", "'", "AKIA", "ghp_", "0123456789", "hunter2")
_assignments = st.tuples(
    st.sampled_from(_KEYWORDS),
    st.sampled_from(("", "_v2", "'", '"')),
    st.sampled_from(("=", ": ", " = ", ":")),
    st.sampled_from(("'", '"')),
    st.sampled_from(("hunter2-correct-horse", "short", "0123456789abcdef", "it's-mine-now")),
    st.sampled_from(("'", '"')),
).map("".join)


def _naive_findings(text: str) -> list[tuple[int, str, str]]:
    """The rules as written (str patterns, finditer, the case-insensitive one included):
    specific rules first, a later match overlapping an earlier one left out."""
    taken: list[tuple[int, int]] = []
    found = []
    for rule, pattern in secrets_scan.RULES.items():
        for match in pattern.finditer(text):
            start, end = match.span("secret")
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append((start, rule, match.group("secret")))
    return [(text.count("\n", 0, start) + 1, rule, redact(secret)) for start, rule, secret in sorted(found)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_assignments, st.sampled_from(_NOISE + _KEYWORDS)), max_size=30).map("".join))
def test_the_byte_scan_finds_what_the_rules_as_written_find(text: str) -> None:
    # The byte scan tries the case-insensitive rule only where a keyword stem is: it must
    # still find exactly the leftmost non-overlapping matches the plain rules find.
    found = [(f.line, f.rule, f.preview) for f in secrets_scan.scan_bytes(text.encode(), "f")]
    assert found == _naive_findings(text)


# --- dependencies ----------------------------------------------------------------------------

PYPROJECT = """
[project]
name = "demo"
dependencies = ["requests>=2.31", "Click[extra] == 8.1 ; python_version >= '3.8'"]

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.poetry.dependencies]
python = "^3.11"
httpx = "^0.27"
rich = { version = "^13", extras = ["jupyter"] }
"""

REQUIREMENTS = """\
# pinned for production
-r base.txt
-e ./local-package
--index-url https://example.invalid/simple

flask==3.0  # the web framework
numpy
https://example.invalid/archive.tar.gz
"""

PACKAGE_JSON = {"name": "web", "dependencies": {"react": "^18.2.0"}, "devDependencies": {"vitest": "^1.0.0"}}


def specs(manifest: dict[str, object]) -> dict[str, str]:
    dependencies = manifest["dependencies"]
    assert isinstance(dependencies, list)
    return {dep["name"]: dep["spec"] for dep in dependencies}


@pytest.mark.anyio
async def test_dependencies_from_all_manifest_kinds(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", PYPROJECT)
    write(tmp_path, "requirements.txt", REQUIREMENTS)
    write(tmp_path, "tools/requirements-dev.txt", "black>=24\n")
    write(tmp_path, "web/package.json", json.dumps(PACKAGE_JSON))
    write(tmp_path, "web/node_modules/broken/package.json", "{ not json")  # vendored: never read

    summary = await DependenciesModule().run(make_context(tmp_path, "dependencies"))

    manifests = {manifest["path"]: manifest for manifest in summary["manifests"]}
    assert set(manifests) == {
        "pyproject.toml", "requirements.txt", "tools/requirements-dev.txt", "web/package.json",
    }
    assert specs(manifests["pyproject.toml"]) == {
        "requests": ">=2.31", "Click": "== 8.1", "pytest": ">=8", "httpx": "^0.27", "rich": "^13",
    }
    groups = {dep["name"]: dep["group"] for dep in manifests["pyproject.toml"]["dependencies"]}
    assert groups["pytest"] == "test"
    assert specs(manifests["requirements.txt"]) == {"flask": "==3.0", "numpy": ""}
    assert specs(manifests["tools/requirements-dev.txt"]) == {"black": ">=24"}
    assert specs(manifests["web/package.json"]) == {"react": "^18.2.0", "vitest": "^1.0.0"}
    assert manifests["web/package.json"]["kind"] == "package.json"
    assert summary["manifest_count"] == 4
    assert summary["total_dependencies"] == 5 + 2 + 1 + 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("relpath", "content"),
    [
        ("pyproject.toml", "[project\nname = 'x'\n"),
        ("web/package.json", '{"dependencies": {"react": '),
        ("package.json", '{"dependencies": ["react"]}'),
        ("pyproject.toml", "[project]\ndependencies = 'requests'\n"),
    ],
    ids=["invalid-toml", "invalid-json", "json-wrong-shape", "toml-wrong-shape"],
)
async def test_malformed_manifest_fails_the_module(tmp_path: Path, relpath: str, content: str) -> None:
    write(tmp_path, "requirements.txt", "flask\n")
    write(tmp_path, relpath, content)
    with pytest.raises(ModuleError, match=f"malformed manifest {relpath}: ") as caught:
        await DependenciesModule().run(make_context(tmp_path, "dependencies"))
    assert caught.value.module == "dependencies"


# --- todos -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_todos_count_markers_in_comments_only(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "\n".join([
        "# TODO: first",
        'x = "TODO in a string is not a comment"',
        "y = 1  # FIXME later",
        "# todo in lower case is not a marker",
        f"# TODO rotate: password = '{PASSWORD}'",
        "# HACK " + "z" * 300,
        "",
    ]))
    write(tmp_path, "b.js", "// XXX fragile\n/* HACK: block */\n * TODO continuation\nconst s = 'FIXME';\n")
    write(tmp_path, "c.md", "<!-- TODO docs -->\nTODO in prose is not a comment\n")
    write(tmp_path, "d.json", '{"note": "TODO"}\n')

    summary = await TodosModule().run(make_context(tmp_path, "todos"))

    assert summary["counts_by_marker"] == {"TODO": 4, "FIXME": 1, "XXX": 1, "HACK": 2}
    assert summary["total"] == 8
    assert summary["files_scanned"] == 4
    assert summary["top_files"] == [{"path": "a.py", "count": 4}, {"path": "b.js", "count": 3},
                                    {"path": "c.md", "count": 1}]
    sample = {(entry["path"], entry["line"]): entry for entry in summary["sample"]}
    assert sample[("a.py", 3)]["marker"] == "FIXME"
    assert sample[("a.py", 3)]["text"] == "y = 1  # FIXME later"
    assert len(sample[("a.py", 6)]["text"]) == 120
    assert PASSWORD not in json.dumps(summary)


@pytest.mark.anyio
async def test_todos_sample_is_capped(tmp_path: Path) -> None:
    write(tmp_path, "many.py", "# TODO\n" * 80)
    summary = await TodosModule().run(make_context(tmp_path, "todos"))
    assert summary["total"] == 80
    assert len(summary["sample"]) == 50
