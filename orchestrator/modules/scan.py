"""File analyzers and the batch function that reads each file once for all of them.

A module that looks at file contents describes its per-file work as a
:class:`FileAnalyzer`: which files it wants (:meth:`FileAnalyzer.select`) and what it
makes of one file (:meth:`FileAnalyzer.analyze`). The job's shared pass
(:mod:`orchestrator.modules.job_files`) groups the files into batches and hands each
batch, with every analyzer that wants any of its files, to :func:`run_batch`, which
runs in a worker process: each file is opened and read **once**, and every analyzer
that selected it gets the same :class:`FileContent`.

Analyzers cross a process boundary, so they must be picklable: an instance of a class
defined at the top level of an importable module, holding plain data.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar

from orchestrator.modules.index import FileEntry, open_regular

__all__ = [
    "BINARY_SNIFF_BYTES",
    "BatchRequest",
    "BatchResult",
    "FileAnalyzer",
    "FileContent",
    "Status",
    "looks_binary",
    "read_content",
    "run_batch",
    "run_batch_read_ahead",
]

R = TypeVar("R")
Status = Literal["ok", "binary", "large", "unreadable"]

#: A NUL byte in this many leading bytes marks a file as binary (the heuristic git uses).
BINARY_SNIFF_BYTES: Final = 8192
_CHUNK: Final = 1 << 20
#: Read first: enough to tell binary from text, and most text files whole.
_HEAD: Final = 64 * 1024


def looks_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_SNIFF_BYTES]


def _count_lines(data: bytes) -> int:
    # A final line without a trailing newline is still a line.
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


class FileContent:
    """One file as read once for every analyzer: its bytes (when within the size cap),
    what kind of content it is, its line count and, on demand, its decoded text."""

    __slots__ = ("_lines", "_text", "data", "opened", "status")

    def __init__(
        self, status: Status, data: bytes | None = None, lines: int | None = None, *, opened: bool = True
    ) -> None:
        self.status: Status = status
        #: Whether reading it opened the file (not for a preloaded or skipped-by-size file).
        self.opened = opened
        #: The whole file for ``ok`` and ``binary``; None when ``large`` or ``unreadable``.
        self.data = data
        self._lines = lines
        self._text: str | None = None

    @property
    def lines(self) -> int:
        """Lines of text (0 for binary or unreadable files; counted while streaming large ones)."""
        if self._lines is None:
            self._lines = _count_lines(self.data) if self.data is not None and self.status == "ok" else 0
        return self._lines

    def text(self) -> str | None:
        """The content as text, or None unless ``ok``. Decoded once, shared by the analyzers.

        Invalid UTF-8 is replaced rather than failing: for line counts and pattern scans a
        few U+FFFD characters are harmless, and latin-1 sources are still worth scanning.
        """
        if self.status != "ok" or self.data is None:
            return None
        if self._text is None:
            self._text = self.data.decode("utf-8", errors="replace")
        return self._text


class FileAnalyzer(abc.ABC, Generic[R]):
    """Per-file work of a module, run in worker processes (so: picklable, top-level class).

    ``analyze`` is called for the selected files whose content is ``ok`` (read, within
    the size cap, not binary); binary, oversized and unreadable files are counted in the
    module's walk statistics instead, unless the flags below ask for them.
    """

    #: Also call ``analyze`` for binary files (``content.status == "binary"``).
    include_binary: ClassVar[bool] = False
    #: Also call ``analyze`` for files over the size cap (``content.status == "large"``,
    #: no data), with their lines counted by streaming the file.
    include_large: ClassVar[bool] = False
    #: With ``include_binary``: whether ``analyze`` needs a binary file's bytes (else
    #: ``content.data`` is None for binary files, which are then not read past their start).
    binary_data: ClassVar[bool] = False

    def select(self, entry: FileEntry) -> bool:
        """Whether this analyzer wants ``entry`` (runs in the job's process, per file)."""
        return True

    @abc.abstractmethod
    def analyze(self, entry: FileEntry, content: FileContent) -> R | None:
        """The finding for one file (None: nothing to report). Runs in a worker process."""


def read_content(
    entry: FileEntry,
    max_bytes: int,
    *,
    stream_large: bool,
    binary_data: bool = True,
    cancel: threading.Event | None = None,
    opened: int | OSError | None = None,
) -> FileContent:
    """Read ``entry`` once: its bytes if within ``max_bytes``, its line count otherwise
    when ``stream_large`` (without holding it in memory), never a non-regular file.

    Without ``binary_data`` a binary file is read no further than its first bytes: most
    of the bytes of a real tree (``/usr``) are executables and libraries nobody scans.
    ``opened`` is what :func:`open_ahead` did for this entry (its descriptor, closed
    here, or why it could not be opened); without it the file is opened here.
    """
    if entry.preloaded is not None:
        content = _classify(entry.preloaded)
        content.opened = False
        return content
    if not _needs_open(entry, max_bytes, stream_large):
        return FileContent("large", opened=False)  # nobody wants more than its size
    if opened is None:
        opened = open_ahead(entry, max_bytes, stream_large=stream_large)
    if isinstance(opened, OSError):
        return FileContent("unreadable")
    assert opened is not None  # the file needs opening (checked above)
    with os.fdopen(opened, "rb") as handle:
        try:
            data = handle.read(min(_HEAD, max_bytes + 1))
            if not binary_data and looks_binary(data):
                return FileContent("binary")
            if len(data) <= max_bytes and len(data) == _HEAD:
                data += handle.read(max_bytes + 1 - len(data))
            if len(data) <= max_bytes:
                return _classify(data)
            if not stream_large:
                return FileContent("large")
            return FileContent("large", None, _stream_lines(handle, data, cancel))
        except OSError:
            return FileContent("unreadable")


def _needs_open(entry: FileEntry, max_bytes: int, stream_large: bool) -> bool:
    return entry.preloaded is None and (entry.size <= max_bytes or stream_large)


def open_ahead(entry: FileEntry, max_bytes: int, *, stream_large: bool, advise: bool = False) -> int | OSError | None:
    """Open ``entry`` for :func:`read_content` (None: it will not be opened). With
    ``advise``, the kernel is asked to start reading it now (``POSIX_FADV_WILLNEED``):
    the files ahead of the one being analysed come in from disk meanwhile, without a
    thread of ours (reader threads cost more CPU than they saved once files are cached)."""
    if not _needs_open(entry, max_bytes, stream_large):
        return None
    try:
        fd = open_regular(os.path.join(entry.root, entry.relpath))  # a str: no Path per file
    except OSError as exc:
        return exc
    if advise and _FADVISE is not None:
        # Its head only: a binary file is read no further (most of /usr), and past the head
        # a text file's sequential read gets the kernel's own read-ahead.
        with contextlib.suppress(OSError):
            _FADVISE(fd, 0, min(entry.size, max_bytes + 1, _HEAD), os.POSIX_FADV_WILLNEED)
    return fd


_FADVISE: Final = getattr(os, "posix_fadvise", None)


def _classify(data: bytes) -> FileContent:
    return FileContent("binary", data) if looks_binary(data) else FileContent("ok", data)


def _stream_lines(handle: Any, first: bytes, cancel: threading.Event | None) -> int:
    if looks_binary(first):
        return 0
    lines, last = first.count(b"\n"), first
    while chunk := handle.read(_CHUNK):
        lines += chunk.count(b"\n")
        last = chunk
        if cancel is not None and cancel.is_set():
            break  # a multi-GB file must not outlive a cancel
    return lines + (1 if last and not last.endswith(b"\n") else 0)


@dataclass(frozen=True)
class BatchRequest:
    """Files of one batch and, for each, which of the analyzers want it."""

    entries: tuple[FileEntry, ...]
    #: Per entry, indexes into ``analyzers``.
    wants: tuple[tuple[int, ...], ...]
    analyzers: tuple[FileAnalyzer[Any], ...]
    max_file_bytes: int


@dataclass
class AnalyzerOutcome:
    """What one analyzer made of one batch."""

    #: (position of the entry in the batch, finding) for the findings that are not None.
    results: list[tuple[int, Any]] = field(default_factory=list)
    files: int = 0
    #: Files handed to ``analyze``.
    analyzed: int = 0
    skipped_binary: int = 0
    skipped_large: int = 0
    skipped_unreadable: int = 0
    #: The analyzer raised: the first traceback (it is not called again in this batch).
    error: str | None = None


@dataclass
class BatchResult:
    outcomes: list[AnalyzerOutcome]
    #: Files this batch opened (an instrumented count: one per file, never more).
    opened: int = 0
    cancelled: bool = False


def run_batch(request: BatchRequest, cancel: threading.Event | None = None, *, read_ahead: int = 0) -> BatchResult:
    """Read each file of the batch once and give it to every analyzer that wants it.

    With ``read_ahead`` (in a pool worker process), that many files past the one being
    analysed are already open, with the kernel told to read them (see
    :func:`open_ahead`): on a cold cache the disk works while the analyzers run. Each
    file is still opened once, and at most ``read_ahead`` + 1 are open at a time.
    """
    outcomes = [AnalyzerOutcome() for _ in request.analyzers]
    result = BatchResult(outcomes)
    stream = [analyzer.include_large for analyzer in request.analyzers]
    binary = [analyzer.include_binary and analyzer.binary_data for analyzer in request.analyzers]
    items = list(zip(request.entries, request.wants, strict=True))
    flags = [(any(stream[i] for i in wants), any(binary[i] for i in wants)) for _, wants in items]
    ahead: deque[int | OSError | None] = deque()
    try:
        for position, (entry, wants) in enumerate(items):
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                break
            # The window: this file and up to ``read_ahead`` more, each opened once, here.
            while len(ahead) <= min(read_ahead, len(items) - 1 - position):
                upcoming = position + len(ahead)
                ahead.append(
                    open_ahead(
                        items[upcoming][0],
                        request.max_file_bytes,
                        stream_large=flags[upcoming][0],
                        advise=read_ahead > 0,
                    )
                )
            stream_large, binary_data = flags[position]
            content = read_content(
                entry,
                request.max_file_bytes,
                stream_large=stream_large,
                binary_data=binary_data,
                cancel=cancel,
                opened=ahead.popleft(),
            )
            result.opened += content.opened
            for index in wants:
                _apply(request.analyzers[index], outcomes[index], position, entry, content)
    finally:
        for left in ahead:
            if isinstance(left, int):
                os.close(left)
    return result


#: Files opened ahead per batch in a pool worker (see run_batch).
READ_AHEAD: Final = 8


def run_batch_read_ahead(request: BatchRequest) -> BatchResult:
    """:func:`run_batch` for a pool worker process (killed, never joined, on cancel)."""
    return run_batch(request, read_ahead=READ_AHEAD)


def _apply(
    analyzer: FileAnalyzer[Any], outcome: AnalyzerOutcome, position: int, entry: FileEntry, content: FileContent
) -> None:
    outcome.files += 1
    status = content.status
    if status == "unreadable":
        outcome.skipped_unreadable += 1
        return
    if status == "binary" and not analyzer.include_binary:
        outcome.skipped_binary += 1
        return
    if status == "large" and not analyzer.include_large:
        outcome.skipped_large += 1
        return
    if outcome.error is not None:
        return
    outcome.analyzed += 1
    try:
        found = analyzer.analyze(entry, content)
    except Exception as exc:  # noqa: BLE001 - reported to the module as its own failure
        outcome.error = f"{type(exc).__name__}: {exc} (analysing {entry.relpath})"
        return
    if found is not None:
        outcome.results.append((position, found))


def batch_ranges(sizes: Sequence[int], *, max_files: int, max_bytes: int) -> list[range]:
    """Consecutive ranges of positions with at most ``max_files`` files and, unless a
    single file is larger, ``max_bytes`` bytes each."""
    ranges: list[range] = []
    start, total = 0, 0
    for position, size in enumerate(sizes):
        if position > start and (position - start >= max_files or total + size > max_bytes):
            ranges.append(range(start, position))
            start, total = position, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges
