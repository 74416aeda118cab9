"""One version, everywhere (issue 19): ``orchestrator.__version__`` is the source; the
installed distribution's metadata (pyproject reads it statically), ``orchestrator
--version`` and the ``service.version`` of the exported telemetry all say the same."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from telemetry_helpers import run_orchestrator

import orchestrator
from otel.files import SIGNAL_FILES, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
#: PEP 440 release versions as we write them: N.N.N with an optional pre/post/dev suffix.
VERSION = re.compile(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?")


def test_the_version_is_written_once_and_read_by_the_build() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project, "pyproject.toml must not repeat the version"
    assert "version" in project["dynamic"]
    assert VERSION.fullmatch(orchestrator.__version__), orchestrator.__version__
    # the installed metadata (editable or wheel) was built from that attribute
    assert importlib.metadata.version("orchestrator") == orchestrator.__version__


@pytest.mark.slow  # two subprocesses
def test_cli_version_and_telemetry_resource_carry_the_package_version(tmp_path: Path) -> None:
    done = run_orchestrator("--version", cwd=tmp_path, env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"orchestrator {orchestrator.__version__}"

    source = tmp_path / "project"
    source.mkdir()
    (source / "app.py").write_text("print('hi')\n")
    data = tmp_path / "data"
    ran = run_orchestrator(
        "--data-dir", str(data), "run", "--source", str(source), "--modules", "inventory", cwd=tmp_path, env={}
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    records = list(read_jsonl(data / "telemetry" / SIGNAL_FILES["traces"]))
    versions = {
        attribute["value"].get("stringValue")
        for record in records
        for resource_spans in record["resourceSpans"]
        for attribute in resource_spans["resource"]["attributes"]
        if attribute["key"] == "service.version"
    }
    assert versions == {orchestrator.__version__}
