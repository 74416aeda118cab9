"""The embedded default's telemetry files: bounded by rotation, read back oldest first."""

from __future__ import annotations

from pathlib import Path

from otel.files import JsonlWriter, read_jsonl


def line(n: int) -> str:
    """A record of exactly 50 bytes with its newline."""
    return f'{{"n":{n},"pad":"{"x" * (34 - len(str(n)))}"}}'


def test_rotation_keeps_the_newest_lines_within_the_size_and_backup_bounds(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    assert len(line(7)) + 1 == 50
    writer = JsonlWriter(path, max_bytes=150, backups=2)  # three lines per file
    for n in range(20):
        assert writer.write(line(n))

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    assert all(p.stat().st_size <= 150 for p in tmp_path.iterdir())
    # 20 lines, 3 a file, 3 files: the last 8 kept (2 in the current file, 3 in each
    # backup), oldest first when read back; the oldest 12 rotated out for good.
    assert [record["n"] for record in read_jsonl(path)] == list(range(12, 20))


def test_reading_back_skips_files_that_are_not_backups_and_lines_cut_short(tmp_path: Path) -> None:
    """A stray `spans.jsonl.orig` or `.bak` beside the files (an editor, a copy) was read
    as a backup number and failed every `trace` and `report` with a ValueError."""
    path = tmp_path / "spans.jsonl"
    path.write_text(line(3) + "\n" + '{"n": 4, "cut sh')  # a crash cut the last line
    (tmp_path / "spans.jsonl.1").write_text(line(2) + "\n")
    (tmp_path / "spans.jsonl.10").write_text(line(1) + "\n")  # numbers, not names, order them
    (tmp_path / "spans.jsonl.orig").write_text(line(99) + "\n")
    (tmp_path / "spans.jsonl.1.bak").write_text(line(98) + "\n")
    assert [record["n"] for record in read_jsonl(path)] == [1, 2, 3]


_CUT_SHORT = r"""
import json, resource, signal, sys
from pathlib import Path

from otel.files import JsonlWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails (EFBIG), not the process
path = Path(sys.argv[1])
writer = JsonlWriter(path)
assert writer.write(json.dumps({"n": 1}))
limit = path.stat().st_size + 4096
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
cut = writer.write(json.dumps({"n": 2, "pad": "x" * 20000}))  # the disk fills mid-line
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
after = writer.write(json.dumps({"n": 3}))  # space again
print(json.dumps({"cut": cut, "after": after, "size": path.stat().st_size, "limit": limit}))
"""


def test_a_line_cut_short_by_a_full_disk_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    path = tmp_path / "traces.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _CUT_SHORT, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["cut"], outcome["after"]) == (False, True)
    assert not path.read_bytes()[: outcome["limit"]].endswith(b"\n")  # the kernel did cut the line
    assert [record["n"] for record in read_jsonl(path)] == [1, 3]
