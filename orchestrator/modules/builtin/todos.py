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
from pathlib import Path
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, ModuleContext
from orchestrator.modules.builtin.secrets_scan import redact_secrets
from orchestrator.modules.files import WalkStats, check_source, display_path, iter_files, read_text

__all__ = ["MARKERS", "TodosModule", "comment_markers", "scan_todos"]

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


def _scan_file(text: str, path: str, suffix: str, counts: Counter[str], sample: list[dict[str, Any]]) -> int:
    found = 0
    for number, line in enumerate(text.splitlines(), start=1):
        for marker in comment_markers(line, suffix):
            found += 1
            counts[marker] += 1
            if len(sample) < MAX_SAMPLE:
                # Redacted: a quoted line may hold a credential ("# TODO rotate key=...").
                snippet = redact_secrets(line.strip())[:MAX_TEXT]
                sample.append({"path": path, "line": number, "marker": marker, "text": snippet})
    return found


def scan_todos(source: Path, ctx: ModuleContext) -> dict[str, Any]:
    check_source(source, ctx.module)
    stats = WalkStats()
    counts: Counter[str] = Counter(dict.fromkeys(MARKERS, 0))
    per_file: Counter[str] = Counter()
    sample: list[dict[str, Any]] = []
    scanned = 0
    for path in iter_files(source, ctx=ctx, stats=stats):
        text = read_text(path, stats=stats)
        if text is None:
            continue
        scanned += 1
        relpath = display_path(path, source)
        if found := _scan_file(text, relpath, path.suffix, counts, sample):
            per_file[relpath] = found
    return {
        "files_scanned": scanned,
        "total": sum(counts.values()),
        "counts_by_marker": {marker: counts[marker] for marker in MARKERS},
        "top_files": [{"path": path, "count": count} for path, count in _top(per_file)],
        "sample": sample,
        "walk": stats.as_dict(),
    }


def _top(per_file: Counter[str]) -> list[tuple[str, int]]:
    # Ties broken by path so the list is stable from run to run.
    return sorted(per_file.items(), key=lambda item: (-item[1], item[0]))[:TOP_FILES]


class TodosModule(BaseModule):
    name: ClassVar[str] = "todos"
    version: ClassVar[str] = "1.0.0"
    expected_runtime: ClassVar[float] = 0.5
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Counts TODO, FIXME, XXX and HACK markers in comments."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return await context.run_sync(scan_todos, context.source, context)
