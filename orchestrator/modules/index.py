"""The file index: one walk of a job's source, shared by all its modules.

Analysed projects are untrusted input: symlink loops, unreadable directories, FIFOs,
device nodes, bind mounts of ``/proc``, multi-gigabyte blobs. The walk therefore
never follows symlinks, keeps regular files only (opening a FIFO blocks forever),
never enters a pseudo-filesystem (:mod:`orchestrator.modules.mounts`), leaves out
what the ignore rules say (:mod:`orchestrator.modules.ignore`), and counts what it
leaves out in :class:`WalkStats` instead of raising.

An entry is small (its path relative to the source, size and kind): the content is
read later, once, by whoever needs it (:mod:`orchestrator.modules.scan`). The only
files the walk itself reads are ``.gitignore`` files; their bytes ride along in the
entry so they are not read twice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, overload

from orchestrator.modules.ignore import DEFAULT_IGNORES, VIRTUALENV_MARKER, IgnoreRules
from orchestrator.modules.mounts import PseudoFilesystems

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "KINDS",
    "OTHER",
    "FileEntry",
    "FileIndex",
    "IndexConfig",
    "UnusableSource",
    "WalkCancelled",
    "WalkStats",
    "build_index",
    "kind_of",
]

DEFAULT_MAX_FILE_BYTES: Final = 5_000_000
#: ``.gitignore`` files larger than this are not honoured (and counted unreadable).
MAX_GITIGNORE_BYTES: Final = 1_000_000
OTHER: Final = "other"

#: Extension -> kind (the language, for source files). ``.h`` is counted as C: it is
#: the more common owner.
KINDS: Final[dict[str, str]] = {
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


def kind_of(name: str) -> str:
    """The kind of a file from its name: its language, or ``"other"``."""
    dot = name.rfind(".")
    return KINDS.get(name[dot:].lower(), OTHER) if dot > 0 else OTHER


class UnusableSource(Exception):
    """The source cannot be analysed at all (missing, a pseudo-filesystem, a FIFO...)."""


class WalkCancelled(Exception):
    """The walk was asked to stop (the job or every module using it was cancelled)."""


@dataclass
class WalkStats:
    """What the walk and the readers saw and left out (all counts, never errors)."""

    #: Regular files found, including those later skipped for size, content or permissions.
    files_seen: int = 0
    skipped_binary: int = 0
    #: Files and directories that could not be listed, stat-ed or opened.
    skipped_unreadable: int = 0
    skipped_large: int = 0
    #: Files and directories left out by the ignore rules (defaults, .gitignore, the job's).
    ignored: int = 0
    #: FIFOs, sockets, device nodes and pseudo-filesystem mounts: never opened or entered.
    skipped_special: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: WalkStats) -> WalkStats:
        return WalkStats(**{key: value + getattr(other, key) for key, value in asdict(self).items()})


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of the source. Cheap to pickle: a process pool gets batches of them."""

    #: The source directory (for a single-file source, the directory holding it).
    root: str
    #: POSIX path relative to ``root``: what summaries show.
    relpath: str
    size: int
    #: The language for source files (``"Python"``...), else ``"other"``.
    kind: str
    #: Bytes already read by the walk (``.gitignore`` files), so they are not read again.
    preloaded: bytes | None = None

    @property
    def path(self) -> Path:
        return Path(self.root, self.relpath)

    @property
    def name(self) -> str:
        return self.relpath.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        """The extension, lower-cased (``".py"``), or ``""``."""
        name = self.name
        dot = name.rfind(".")
        return name[dot:].lower() if dot > 0 else ""


@dataclass(frozen=True)
class IndexConfig:
    """What a walk leaves out. From settings, refined per job (see ``JobOptions``)."""

    ignore: tuple[str, ...] = DEFAULT_IGNORES
    extra_ignore: tuple[str, ...] = ()
    #: False drops ``ignore`` and the virtualenv rule (the job's ``extra_ignore`` stays).
    default_ignores: bool = True
    gitignore: bool = True
    #: Files larger than this are indexed but their content is not read (skipped_large).
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

    def rules(self) -> IgnoreRules:
        return IgnoreRules(
            self.ignore if self.default_ignores else (),
            self.extra_ignore,
            skip_virtualenvs=self.default_ignores,
        )


@dataclass(frozen=True)
class FileIndex(Sequence[FileEntry]):
    """The regular files of a source, in name order, and what the walk left out."""

    root: Path
    entries: tuple[FileEntry, ...]
    stats: WalkStats = field(default_factory=WalkStats)
    config: IndexConfig = field(default_factory=IndexConfig)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    @overload
    def __getitem__(self, position: int) -> FileEntry: ...
    @overload
    def __getitem__(self, position: slice) -> Sequence[FileEntry]: ...
    def __getitem__(self, position: int | slice) -> FileEntry | Sequence[FileEntry]:
        return self.entries[position]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FileEntry]:
        return iter(self.entries)


def build_index(
    source: Path,
    config: IndexConfig | None = None,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    pseudo: PseudoFilesystems | None = None,
    resolved: bool = False,
    stats: WalkStats | None = None,
) -> FileIndex:
    """Walk ``source`` once. Blocking: run it in a thread. ``cancelled()`` is polled
    once per directory and raises :class:`WalkCancelled` when it turns true. With
    ``resolved``, ``source`` was a realpath when its job was created: a symlink in its
    path now means it was swapped since, and it is refused. ``stats``, when given, is
    counted into as the walk goes (another thread may read ``files_seen`` meanwhile)."""
    config = config or IndexConfig()
    pseudo = pseudo or PseudoFilesystems.current()
    root = _check_root(source, pseudo)
    if resolved and root[0] != Path(os.path.abspath(source)):
        # Not where it pointed: the job was confined to (or checked at) the old place.
        # The message names the job's own path only, never where the link leads.
        raise UnusableSource(
            f"source {source} changed since the job was created (a symbolic link now stands in its path): not analysed"
        )
    stats = stats if stats is not None else WalkStats()
    if stat.S_ISREG(root[1].st_mode):
        path = root[0]
        entry = FileEntry(str(path.parent), path.name, root[1].st_size, kind_of(path.name))
        stats.files_seen = 1
        return FileIndex(path, (entry,), stats, config)
    walk = _Walk(root[0], config, pseudo, stats, cancelled)
    return FileIndex(root[0], tuple(walk.run()), stats, config)


def _check_root(source: Path, pseudo: PseudoFilesystems) -> tuple[Path, os.stat_result]:
    # The root is the caller's explicit choice, so a symlinked root is followed; only
    # links found *inside* the tree are not.
    try:
        info = source.stat()
        resolved = source.resolve()
    except FileNotFoundError:
        raise UnusableSource(f"source {source} does not exist") from None
    except (OSError, RuntimeError) as exc:
        raise UnusableSource(f"source {source} cannot be read ({exc.__class__.__name__})") from None
    if pseudo.is_pseudo(resolved, info):
        raise UnusableSource(f"source {source} is on a pseudo-filesystem (/proc, /sys, /dev...): not analysed")
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise UnusableSource(f"source {source} is neither a directory nor a regular file")
    return resolved, info


@dataclass
class _Walk:
    root: Path
    config: IndexConfig
    pseudo: PseudoFilesystems
    stats: WalkStats
    cancelled: Callable[[], bool]

    def run(self) -> Iterator[FileEntry]:
        root = str(self.root)
        # (absolute path, path relative to the root, the rules that apply inside)
        pending: list[tuple[str, str, IgnoreRules]] = [(root, "", self.config.rules())]
        while pending:
            if self.cancelled():
                raise WalkCancelled
            directory, relative, rules = pending.pop()
            listed = self._list(directory)
            if listed is None:
                continue
            if relative and rules.skip_virtualenvs and any(e.name == VIRTUALENV_MARKER for e in listed):
                self.stats.ignored += 1  # a virtualenv, whatever its name
                continue
            gitignore = self._gitignore(listed) if self.config.gitignore else None
            if gitignore is not None:
                rules = rules.descend(relative, gitignore.decode("utf-8", errors="replace"))
            subdirs: list[tuple[str, str, IgnoreRules]] = []
            for entry in listed:
                child = f"{relative}/{entry.name}" if relative else entry.name
                found = self._visit(entry, child, rules, root, gitignore)
                if found is None:
                    continue
                if isinstance(found, FileEntry):
                    yield found
                else:
                    subdirs.append((entry.path, child, rules))
            # Reversed so the stack pops subdirectories in name order.
            pending.extend(reversed(subdirs))

    def _list(self, directory: str) -> list[os.DirEntry[str]] | None:
        try:
            with os.scandir(directory) as entries:
                return sorted(entries, key=lambda entry: entry.name)
        except OSError:
            # PermissionError, a directory deleted mid-walk, ENAMETOOLONG...: skip, count.
            self.stats.skipped_unreadable += 1
            return None

    def _visit(
        self, entry: os.DirEntry[str], relative: str, rules: IgnoreRules, root: str, gitignore: bytes | None
    ) -> FileEntry | bool | None:
        """A FileEntry for a file to index, True for a directory to enter, None to skip."""
        try:
            # follow_symlinks=False is what makes symlink loops harmless: a link is
            # neither a directory nor a file here, so it is simply not visited.
            is_dir = entry.is_dir(follow_symlinks=False)
            if not is_dir and not entry.is_file(follow_symlinks=False):
                if not entry.is_symlink():
                    self.stats.skipped_special += 1  # FIFO, socket, device node
                return None
            info = entry.stat(follow_symlinks=False)
        except OSError:
            self.stats.skipped_unreadable += 1
            return None
        if rules.ignored(relative, entry.name, is_dir):
            self.stats.ignored += 1
            return None
        if self.pseudo.is_pseudo(entry.path, info):
            self.stats.skipped_special += 1
            return None
        if is_dir:
            return True
        if not stat.S_ISREG(info.st_mode):  # replaced since it was listed
            self.stats.skipped_special += 1
            return None
        self.stats.files_seen += 1
        preloaded = gitignore if entry.name == ".gitignore" else None
        return FileEntry(root, relative, info.st_size, kind_of(entry.name), preloaded)

    def _gitignore(self, listed: list[os.DirEntry[str]]) -> bytes | None:
        for entry in listed:
            if entry.name == ".gitignore":
                try:
                    if not entry.is_file(follow_symlinks=False):
                        return None
                except OSError:
                    return None
                data = read_regular(entry.path, MAX_GITIGNORE_BYTES)
                if data is None:
                    self.stats.skipped_unreadable += 1
                return data
        return None


def open_regular(path: str | Path) -> int:
    """A read-only descriptor on ``path`` if it is a regular file, else ``OSError``.

    ``O_NOFOLLOW`` and ``O_NONBLOCK`` make the open itself safe when the entry was swapped
    for a symlink or a FIFO since the walk (a FIFO would block an ordinary open forever);
    ``fstat`` then refuses anything that is not a regular file before a byte is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` of a regular file, or None if unreadable, not regular or larger."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError:
            return None
    return None if len(data) > max_bytes else data
