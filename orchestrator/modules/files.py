"""A safe file walker and readers for modules that walk on their own.

The built-in modules use the job's shared index instead
(:meth:`~orchestrator.modules.base.ModuleContext.index` and ``scan``): one walk and one
read per file for the whole job. These helpers remain for modules written against
them; they apply the same safety rules: symlinks are never followed, only regular
files are yielded and opened (opening a FIFO would block forever), pseudo-filesystems
(``/proc``, ``/sys``, ``/dev``, wherever they are mounted) are never entered, vendored
and tooling directories are skipped, and what is skipped is counted in a
:class:`WalkStats` instead of raising.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from orchestrator.modules.base import ModuleContext, ModuleError
from orchestrator.modules.index import DEFAULT_MAX_FILE_BYTES, WalkStats, open_regular
from orchestrator.modules.mounts import PseudoFilesystems
from orchestrator.modules.scan import BINARY_SNIFF_BYTES, looks_binary

__all__ = [
    "BINARY_SNIFF_BYTES",
    "DEFAULT_MAX_FILE_BYTES",
    "SKIP_DIRS",
    "WalkStats",
    "check_source",
    "display_path",
    "iter_files",
    "looks_binary",
    "read_bytes",
    "read_text",
]

#: Directory names never descended into: VCS metadata, dependency caches and our own
#: state. They are huge, not the project's own code, and would drown the findings.
SKIP_DIRS: Final = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".orchestrator",
    }
)


def check_source(root: Path, module: str) -> None:
    """Fail the module cleanly when there is nothing to analyse.

    Without this a missing source would walk as an empty tree and every module
    would report a plausible-looking but meaningless empty summary.
    """
    if not root.exists():
        raise ModuleError(f"source {root} does not exist", module=module)


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to the analysed source, in POSIX form, for summaries."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return path.as_posix()
    # A single-file source is relative to itself ("."): its name is more useful.
    return path.name if relative == Path(".") else relative.as_posix()


def iter_files(
    root: Path,
    *,
    ctx: ModuleContext | None = None,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    stats: WalkStats | None = None,
) -> Iterator[Path]:
    """Yield the regular files under ``root`` (or ``root`` itself if it is a file).

    Entries are visited in name order so summaries are stable between runs.
    Files over ``max_file_bytes`` (``None``: no cap) are counted and skipped.
    ``ctx.check_cancelled()`` runs once per entry, so a cancelled module stops
    within one file rather than at the end of the walk.
    """
    stats = stats if stats is not None else WalkStats()
    pseudo = PseudoFilesystems.current()
    if ctx is not None:
        ctx.check_cancelled()
    if root.is_file():
        info = _stat_root(root, stats)
        if info is not None and pseudo.is_pseudo(root.resolve(), info):
            stats.skipped_special += 1
            return
        yield from _accept_file(root, info, max_file_bytes, stats)
        return
    try:
        refused = pseudo.is_pseudo(root.resolve(), root.stat())
    except (OSError, RuntimeError):
        refused = False  # listing it fails below, and is counted there
    if refused:
        stats.skipped_special += 1
        return
    pending = [root]
    while pending:
        directory = pending.pop()
        subdirs: list[Path] = []
        for entry in _list_dir(directory, stats):
            if ctx is not None:
                ctx.check_cancelled()
            if _is_dir(entry, stats):
                if entry.name in SKIP_DIRS:
                    continue
                info = _entry_stat(entry, stats)
                if info is not None and pseudo.is_pseudo(entry.path, info):
                    stats.skipped_special += 1  # a mount of /proc, /sys, /dev...: never entered
                    continue
                subdirs.append(Path(entry.path))
            elif _is_file(entry, stats):
                info = _entry_stat(entry, stats)
                if info is not None and pseudo.is_pseudo(entry.path, info):
                    stats.skipped_special += 1
                    continue
                yield from _accept_file(Path(entry.path), info, max_file_bytes, stats)
        # Reversed so the stack pops subdirectories in name order.
        pending.extend(reversed(subdirs))


def _list_dir(directory: Path, stats: WalkStats) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:
        # PermissionError, a directory deleted mid-walk, ENAMETOOLONG...: skip, count.
        stats.skipped_unreadable += 1
        return []


def _is_dir(entry: os.DirEntry[str], stats: WalkStats) -> bool:
    # follow_symlinks=False is what makes symlink loops harmless: a link to a
    # directory is neither a dir nor a file here, so it is simply not visited.
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        stats.skipped_unreadable += 1
        return False


def _is_file(entry: os.DirEntry[str], stats: WalkStats) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        stats.skipped_unreadable += 1
        return False


def _entry_stat(entry: os.DirEntry[str], stats: WalkStats) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        stats.skipped_unreadable += 1
        return None


def _stat_root(path: Path, stats: WalkStats) -> os.stat_result | None:
    # The root is the caller's explicit choice, so a symlinked root is followed;
    # only links found *inside* the tree are not.
    try:
        return path.stat()
    except OSError:
        stats.skipped_unreadable += 1
        return None


def _accept_file(
    path: Path, info: os.stat_result | None, max_file_bytes: int | None, stats: WalkStats
) -> Iterator[Path]:
    if info is None or not stat.S_ISREG(info.st_mode):
        return
    stats.files_seen += 1
    if max_file_bytes is not None and info.st_size > max_file_bytes:
        stats.skipped_large += 1
        return
    yield path


def read_bytes(
    path: Path,
    *,
    stats: WalkStats | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    reject_binary: bool = True,
) -> bytes | None:
    """The file's bytes, or ``None`` (counted in ``stats``) if unreadable, too large or binary.

    The size cap is enforced on what is actually read, not only on the earlier
    stat, because the file may have grown since it was walked.
    """
    stats = stats if stats is not None else WalkStats()
    try:
        # Never a FIFO or a device, even one swapped in since the walk (see open_regular).
        with os.fdopen(open_regular(path), "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        stats.skipped_unreadable += 1
        return None
    if len(data) > max_bytes:
        stats.skipped_large += 1
        return None
    if reject_binary and looks_binary(data):
        stats.skipped_binary += 1
        return None
    return data


def read_text(path: Path, *, stats: WalkStats | None = None, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str | None:
    """The file as text, or ``None`` if unreadable, too large or binary.

    Decoding replaces invalid UTF-8 rather than failing: for line counts and
    pattern scans a few U+FFFD characters are harmless, and latin-1 sources are
    still worth scanning.
    """
    data = read_bytes(path, stats=stats, max_bytes=max_bytes)
    return None if data is None else data.decode("utf-8", errors="replace")
