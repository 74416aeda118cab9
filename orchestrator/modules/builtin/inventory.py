"""``inventory``: files, lines and bytes per language, and the largest files.

Every indexed file counts, whatever its size or content: an inventory that silently
omitted the biggest files would be wrong. Lines come from the job's shared read (files
over the size cap are streamed for their line count, never held in memory); binary and
unreadable files count with 0 lines.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext
from orchestrator.modules.index import KINDS, FileEntry, kind_of
from orchestrator.modules.job_files import ScanResult
from orchestrator.modules.scan import FileContent

__all__ = ["LANGUAGES", "InventoryModule", "language_of"]

TOP_LARGEST: Final = 5
#: Extension -> language (the index's kinds).
LANGUAGES: Final = KINDS


def language_of(name: str) -> str:
    return kind_of(name)


@dataclass
class _Tally:
    files: int = 0
    lines: int = 0
    bytes: int = 0


class _LinesAnalyzer(FileAnalyzer[tuple[int, bool]]):
    """(lines, binary) of every file."""

    include_binary = True
    include_large = True

    def analyze(self, entry: FileEntry, content: FileContent) -> tuple[int, bool] | None:
        binary = content.status == "binary"
        return None if not binary and content.lines == 0 else (content.lines, binary)


def summarise(result: ScanResult[tuple[int, bool]], entries: list[FileEntry]) -> dict[str, Any]:
    tallies: dict[str, _Tally] = {}
    for entry in entries:
        tally = tallies.setdefault(entry.kind, _Tally())
        tally.files += 1
        tally.bytes += entry.size
    binary = 0
    for entry, (lines, is_binary) in result.results:
        tallies[entry.kind].lines += lines
        binary += is_binary
    stats = result.stats
    stats.skipped_binary += binary
    # Ties in size in name order, so the list is stable from run to run.
    largest = heapq.nsmallest(TOP_LARGEST, entries, key=lambda entry: (-entry.size, entry.relpath))
    return {
        "languages": {
            language: {"files": t.files, "lines": t.lines, "bytes": t.bytes} for language, t in sorted(tallies.items())
        },
        "total_files": sum(t.files for t in tallies.values()),
        "total_lines": sum(t.lines for t in tallies.values()),
        "total_bytes": sum(t.bytes for t in tallies.values()),
        "largest_files": [{"path": entry.relpath, "bytes": entry.size} for entry in largest],
        "walk": stats.as_dict(),
    }


class InventoryModule(BaseModule):
    name: ClassVar[str] = "inventory"
    option_names: ClassVar[frozenset[str] | None] = frozenset()  # takes no options
    version: ClassVar[str] = "1.1.0"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Files, lines and bytes per language, and the largest files."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        result = await context.scan(_LinesAnalyzer())
        return summarise(result, list(await context.index()))
