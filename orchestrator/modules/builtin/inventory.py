"""``inventory``: files, lines and bytes per language, and the largest files."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, ModuleContext
from orchestrator.modules.files import WalkStats, check_source, display_path, iter_files, looks_binary

__all__ = ["LANGUAGES", "InventoryModule", "language_of"]

OTHER: Final = "other"
TOP_LARGEST: Final = 5
_CHUNK: Final = 1 << 20

#: Extension -> language. ``.h`` is counted as C: it is the more common owner.
LANGUAGES: Final[dict[str, str]] = {
    ".py": "Python",
    ".pyi": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".cjs": "JavaScript",
    ".jsx": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".mts": "TypeScript",
    ".cts": "TypeScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".cxx": "C++",
    ".hh": "C++",
    ".hpp": "C++",
    ".hxx": "C++",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".toml": "TOML",
    ".yaml": "YAML",
    ".yml": "YAML",
    ".json": "JSON",
    ".sh": "Shell",
    ".bash": "Shell",
    ".zsh": "Shell",
}


def language_of(path: Path) -> str:
    return LANGUAGES.get(path.suffix.lower(), OTHER)


@dataclass
class _Tally:
    files: int = 0
    lines: int = 0
    bytes: int = 0


def _count_lines(path: Path, ctx: ModuleContext, stats: WalkStats) -> int:
    """Lines in a text file, streamed so a huge file never sits in memory.

    Binary files have no meaningful lines: 0, counted as skipped_binary.
    """
    lines = 0
    last = b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                if not last and looks_binary(chunk):
                    stats.skipped_binary += 1
                    return 0
                lines += chunk.count(b"\n")
                last = chunk
                ctx.check_cancelled()  # a multi-GB file must not outlive a cancel
    except OSError:
        stats.skipped_unreadable += 1
        return 0
    # A final line without a trailing newline is still a line.
    return lines + (1 if last and not last.endswith(b"\n") else 0)


def _file_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0  # vanished since the walk; _count_lines records it as unreadable


def build_inventory(source: Path, ctx: ModuleContext) -> dict[str, Any]:
    check_source(source, ctx.module)
    stats = WalkStats()
    tallies: dict[str, _Tally] = {}
    largest: list[tuple[int, str]] = []  # a min-heap of the TOP_LARGEST biggest
    # No size cap: an inventory that silently omits the biggest files would be wrong,
    # and lines are streamed, so large files cost time but not memory.
    for path in iter_files(source, ctx=ctx, max_file_bytes=None, stats=stats):
        size = _file_size(path)
        tally = tallies.setdefault(language_of(path), _Tally())
        tally.files += 1
        tally.bytes += size
        tally.lines += _count_lines(path, ctx, stats)
        entry = (size, display_path(path, source))
        if len(largest) < TOP_LARGEST:
            heapq.heappush(largest, entry)
        else:
            heapq.heappushpop(largest, entry)
    return _summary(tallies, largest, stats)


def _summary(tallies: dict[str, _Tally], largest: list[tuple[int, str]], stats: WalkStats) -> dict[str, Any]:
    return {
        "languages": {
            language: {"files": t.files, "lines": t.lines, "bytes": t.bytes} for language, t in sorted(tallies.items())
        },
        "total_files": sum(t.files for t in tallies.values()),
        "total_lines": sum(t.lines for t in tallies.values()),
        "total_bytes": sum(t.bytes for t in tallies.values()),
        "largest_files": [
            {"path": path, "bytes": size} for size, path in sorted(largest, key=lambda item: (-item[0], item[1]))
        ],
        "walk": stats.as_dict(),
    }


class InventoryModule(BaseModule):
    name: ClassVar[str] = "inventory"
    version: ClassVar[str] = "1.0.0"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Files, lines and bytes per language, and the largest files."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return await context.run_sync(build_inventory, context.source, context)
