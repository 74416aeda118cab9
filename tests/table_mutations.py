"""Mutations of the status machine's tables, which mutmut does not make (it mutates
function bodies, not module-level data): every (from, to) pair of ``TRANSITIONS`` flipped
(a legal one removed, an illegal one added: Queued -> Completed among them) and every
target of ``_EVENT_BY_TARGET`` mapped to another event. Each must fail the Python part of
tests/test_transition_table.py. Works on a copy of the tree; run by ``make mutation``:

    .venv/bin/python tests/table_mutations.py
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATUSES = ("PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
PYTEST = (sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider")
_ROW = r"(JobStatus\.{}: )frozenset\((.*?)\)(,\n)"


def _table(text: str) -> dict[str, set[str]]:
    rows = {}
    for status in STATUSES:
        match = re.search(_ROW.format(status), text)
        assert match is not None, f"no row for {status} in status.py"
        rows[status] = set(re.findall(r"JobStatus\.(\w+)", match.group(2)))
    return rows


def _render(text: str, table: dict[str, set[str]]) -> str:
    for status in STATUSES:
        targets = ", ".join(f"JobStatus.{t}" for t in STATUSES if t in table[status])
        row = f"frozenset({{{targets}}})" if targets else "frozenset()"
        text = re.sub(_ROW.format(status), lambda m, row=row: m.group(1) + row + m.group(3), text, count=1)
    return text


def _mutants(original: str) -> list[tuple[str, str]]:
    table = _table(original)
    found = []
    for status, target in itertools.product(STATUSES, STATUSES):
        flipped = {k: set(v) for k, v in table.items()}
        flipped[status] ^= {target}
        change = "removed" if target in table[status] else "added"
        found.append((f"{status} -> {target} {change}", _render(original, flipped)))
    events = re.findall(r"JobStatus\.(\w+): LifecycleEvent\.(\w+),", original)
    assert events, "no _EVENT_BY_TARGET entries in status.py"
    for target, event in events:
        for other in sorted({e for _, e in events} - {event}):
            old, new = f"JobStatus.{target}: LifecycleEvent.{event},", f"JobStatus.{target}: LifecycleEvent.{other},"
            found.append((f"event of {target}: {event} -> {other}", original.replace(old, new, 1)))
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="table-mutations-") as tmp:
        copy = Path(tmp)
        for part in ("orchestrator", "otel", "tests"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy)
        status_py = copy / "orchestrator" / "domain" / "status.py"
        original = status_py.read_text("utf-8")
        survived = []
        mutants = _mutants(original)
        for name, text in mutants:
            status_py.write_text(text, "utf-8")
            run = subprocess.run(
                [*PYTEST, "tests/test_transition_table.py", "-k", "not database"],
                cwd=copy,
                env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                check=False,
            )
            if run.returncode == 0:
                survived.append(name)
        status_py.write_text(original, "utf-8")
    print(f"table mutants: {len(mutants) - len(survived)} of {len(mutants)} killed")
    for name in survived:
        print(f"  survived: {name}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
