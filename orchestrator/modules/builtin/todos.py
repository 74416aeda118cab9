"""``todos``: TODO / FIXME / XXX / HACK markers in comments.

Only markers inside a comment count: ``"TODO"`` in a string or a variable name is
not a note left for a maintainer. Comments are recognised per line from the
file's extension (``#``, ``//``, ``/* */``, ``<!-- -->``, ``--``, ``;``); this
is a heuristic, not a parser, so a ``#`` inside a string can still open a
"comment". Unknown extensions accept any of the common openers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext
from orchestrator.modules.builtin.secrets_scan import redact_secrets
from orchestrator.modules.index import FileEntry
from orchestrator.modules.job_files import ScanResult
from orchestrator.modules.scan import FileContent

__all__ = ["MARKERS", "TodosModule", "comment_markers", "scan_bytes"]

MARKERS: Final = ("TODO", "FIXME", "XXX", "HACK")
MAX_SAMPLE: Final = 50
TOP_FILES: Final = 20
MAX_TEXT: Final = 120

# Case-sensitive on purpose: "todo" in prose or a "todo_list" variable is not a marker.
_MARKER: Final = re.compile(r"\b(" + "|".join(MARKERS) + r")\b")

_HASH: Final = ("#",)
_SLASH: Final = ("//", "/*", "*")  # "*" only at the start of a line: a block-comment body
_MARKUP: Final = ("<!--",)
_GENERIC: Final = ("#", "//", "/*", "*", "<!--", "--", ";")

#: Extension -> comment openers. An empty tuple: the format has no comments (JSON).
_OPENERS: Final[dict[str, tuple[str, ...]]] = {
    **dict.fromkeys(
        (
            ".py",
            ".pyi",
            ".sh",
            ".bash",
            ".zsh",
            ".toml",
            ".yaml",
            ".yml",
            ".rb",
            ".pl",
            ".r",
            ".cfg",
            ".conf",
            ".mk",
            ".cmake",
            ".dockerfile",
        ),
        _HASH,
    ),
    **dict.fromkeys(
        (
            ".js",
            ".mjs",
            ".cjs",
            ".jsx",
            ".ts",
            ".tsx",
            ".mts",
            ".cts",
            ".go",
            ".rs",
            ".java",
            ".c",
            ".h",
            ".cc",
            ".cpp",
            ".cxx",
            ".hh",
            ".hpp",
            ".hxx",
            ".cs",
            ".kt",
            ".swift",
            ".scala",
            ".dart",
            ".css",
            ".scss",
            ".less",
        ),
        _SLASH,
    ),
    **dict.fromkeys((".md", ".markdown", ".html", ".htm", ".xml", ".svg", ".vue"), _MARKUP),
    **dict.fromkeys((".sql", ".lua", ".hs", ".elm"), ("--", "/*", "*")),
    **dict.fromkeys((".ini", ".lisp", ".el", ".clj", ".asm", ".s"), (";", "#")),
    ".json": (),
}


def _comment_start(line: str, openers: tuple[str, ...]) -> int | None:
    """Index where the line's comment begins, or ``None`` if it has none."""
    stripped = line.lstrip()
    if "*" in openers and stripped.startswith("*"):
        return len(line) - len(stripped)
    found = [index for opener in openers if opener != "*" and (index := line.find(opener)) >= 0]
    return min(found) if found else None


def comment_markers(line: str, suffix: str) -> list[str]:
    """The markers in the comment part of ``line``, for a file with that extension."""
    if _MARKER.search(line) is None:  # fast path: nearly every line has no marker
        return []
    start = _comment_start(line, _OPENERS.get(suffix.lower(), _GENERIC))
    return [] if start is None else _MARKER.findall(line, start)


_MARKER_BYTES: Final = tuple(marker.encode() for marker in MARKERS)


@dataclass(frozen=True)
class _FileTodos:
    counts: dict[str, int]
    #: (line number, marker, redacted text) of the first MAX_SAMPLE markers.
    sample: list[tuple[int, str, str]]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _marker_lines(data: bytes) -> list[int]:
    """Offsets of the starts of the lines holding a marker, in order (a cheap
    ``bytes.find`` per marker: nearly every file has none)."""
    starts = set()
    for marker in _MARKER_BYTES:
        position = data.find(marker)
        while position >= 0:
            starts.add(data.rfind(b"\n", 0, position) + 1)
            position = data.find(marker, position + 1)
    return sorted(starts)


def scan_bytes(data: bytes, suffix: str) -> _FileTodos | None:
    """The markers in one file's comments. Lines end at ``\\n`` (a ``\\r`` before it is dropped)."""
    counts: dict[str, int] = {}
    sample: list[tuple[int, str, str]] = []
    previous, number = 0, 1
    for start in _marker_lines(data):
        number += data.count(b"\n", previous, start)  # in order: each byte counted once
        previous = start
        end = data.find(b"\n", start)
        line = data[start : end if end >= 0 else len(data)].rstrip(b"\r").decode("utf-8", errors="replace")
        for marker in comment_markers(line, suffix):
            counts[marker] = counts.get(marker, 0) + 1
            if len(sample) < MAX_SAMPLE:
                # Redacted: a quoted line may hold a credential ("# TODO rotate key=...").
                sample.append((number, marker, redact_secrets(line.strip())[:MAX_TEXT]))
    return _FileTodos(counts, sample) if counts else None


class _TodosAnalyzer(FileAnalyzer[_FileTodos]):
    def analyze(self, entry: FileEntry, content: FileContent) -> _FileTodos | None:
        assert content.data is not None
        return scan_bytes(content.data, entry.suffix)


def summarise(result: ScanResult[_FileTodos]) -> dict[str, Any]:
    counts: Counter[str] = Counter(dict.fromkeys(MARKERS, 0))
    per_file: Counter[str] = Counter()
    sample: list[dict[str, Any]] = []
    for entry, found in result.results:
        counts.update(found.counts)
        per_file[entry.relpath] = found.total
        for number, marker, text in found.sample[: MAX_SAMPLE - len(sample)]:
            sample.append({"path": entry.relpath, "line": number, "marker": marker, "text": text})
    return {
        "files_scanned": result.analyzed,
        "total": sum(counts.values()),
        "counts_by_marker": {marker: counts[marker] for marker in MARKERS},
        "top_files": [{"path": path, "count": count} for path, count in _top(per_file)],
        "sample": sample,
        "walk": result.stats.as_dict(),
    }


def _top(per_file: Counter[str]) -> list[tuple[str, int]]:
    # Ties broken by path so the list is stable from run to run.
    return sorted(per_file.items(), key=lambda item: (-item[1], item[0]))[:TOP_FILES]


class TodosModule(BaseModule):
    name: ClassVar[str] = "todos"
    option_names: ClassVar[frozenset[str] | None] = frozenset()  # takes no options
    version: ClassVar[str] = "1.1.0"
    expected_runtime: ClassVar[float] = 0.5
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Counts TODO, FIXME, XXX and HACK markers in comments."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return summarise(await context.scan(_TodosAnalyzer()))
