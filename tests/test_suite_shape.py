"""The suite's shape (issue 17): the slow paths named in conftest exist, and the marker
reaches their tests, so ``make test-fast`` leaves out exactly what it says it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SLOW_PATHS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(SLOW_PATHS))
def test_every_slow_path_exists(path: str) -> None:
    assert (ROOT / path).exists(), f"{path} is listed in tests/conftest.py SLOW_PATHS but is gone: update the list"


def test_not_slow_leaves_out_the_slow_files_and_keeps_the_others() -> None:
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            "tests/test_views.py",
            "tests/faults/test_model.py",
            "tests/test_suite_shape.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    files = {line.split("::", 1)[0] for line in ids}
    assert files == {"tests/test_suite_shape.py"}, collected.stdout + collected.stderr
