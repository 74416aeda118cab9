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
