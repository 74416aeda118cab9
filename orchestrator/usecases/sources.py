"""Where a job may point: the source check of ``CreateAnalysisJobUseCase``.

Two kinds of caller (see README: Security):

* **trusted**: the local user of the CLI (``run``, ``submit``) may analyse any path they
  can read, and is told precisely what is wrong with a path;
* **confined**: an HTTP API client is not trusted with the server's filesystem. Its
  source must be an absolute path that, after ``realpath`` (symlinks and ``..``
  resolved), lies inside one of the configured source roots. A path outside the roots,
  a missing one, an unreadable one and a special file all get the SAME message, so the
  API is no oracle for what exists on the server.

Pseudo-filesystems (``/proc``, ``/sys``, ``/dev`` and any mount of such a type) are never
sources, for anyone: their reads can block forever (``/proc/kmsg``) or describe the
server itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

from orchestrator.domain import InvalidRequest
from orchestrator.modules.mounts import MOUNTINFO, PSEUDO_FS_TYPES, PSEUDO_PATHS, parse_mountinfo

__all__ = [
    "NOT_ALLOWED",
    "NO_ROOTS",
    "SourcePolicy",
    "is_pseudo_filesystem",
    "resolved_roots",
]

#: The one message of a confined caller's unusable source, whatever the reason.
NOT_ALLOWED: Final = "source: not found, or not inside the server's source roots"
#: A server with no roots accepts no source from confined callers.
NO_ROOTS: Final = (
    "source: this server accepts no job sources from API clients: its operator must set "
    "ORCHESTRATOR_SOURCE_ROOTS to the directories jobs may analyse"
)


@lru_cache(maxsize=1)
def _pseudo_mounts() -> tuple[Path, ...]:
    """Mount points of pseudo-filesystems (Linux; none elsewhere), from the same mount
    table parser and list of types as the walk's. Read once per process: mounts made
    later are still caught by the fixed prefixes when they sit there."""
    try:
        text = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return ()
    return tuple(Path(m.mount_point) for m in parse_mountinfo(text) if m.fs_type in PSEUDO_FS_TYPES)


@lru_cache(maxsize=1)
def _pseudo_roots() -> tuple[tuple[str, str], ...]:
    """Each pseudo-filesystem root as (itself, itself with one trailing separator)."""
    return tuple((str(root), str(root).rstrip("/") + "/") for root in (*PSEUDO_PATHS, *_pseudo_mounts()))


def is_pseudo_filesystem(resolved: Path) -> bool:
    """Whether a realpath lies on a pseudo-filesystem.

    Compared as strings: a realpath is absolute and normalised, so lying under a root is
    being the root or starting with it and a separator (``/procfs`` is not under
    ``/proc``). ``PurePath.is_relative_to`` said the same at about 3 µs a root, which
    every job's creation paid for each of the machine's pseudo mounts."""
    text = str(resolved)
    return any(text == root or text.startswith(prefix) for root, prefix in _pseudo_roots())


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What a caller may point a job at. ``roots`` None: a trusted caller."""

    roots: tuple[Path, ...] | None = None

    @classmethod
    def trusted(cls) -> SourcePolicy:
        return cls(None)

    @classmethod
    def confined(cls, roots: Iterable[Path]) -> SourcePolicy:
        return cls(tuple(roots))

    @property
    def is_trusted(self) -> bool:
        return self.roots is None

    def check(self, raw: str) -> Path:
        """The resolved source, or :class:`InvalidRequest` naming the ``source`` field."""
        if "\x00" in raw:
            raise InvalidRequest("source: contains a NUL character", field="source")
        if self.roots is None:
            return _trusted(raw)
        return _confined(raw, self.roots)


def _trusted(raw: str) -> Path:
    path = Path(raw).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
        raise InvalidRequest(f"source: {raw} {reason}", field="source") from None
    if is_pseudo_filesystem(resolved):
        raise InvalidRequest(
            f"source: {raw} is on a pseudo-filesystem (/proc, /sys, /dev): not something to analyse", field="source"
        )
    if not (resolved.is_dir() or resolved.is_file()):
        raise InvalidRequest(f"source: {raw} is neither a directory nor a regular file", field="source")
    if not os.access(resolved, os.R_OK):
        raise InvalidRequest(f"source: {raw} is not readable", field="source")
    return resolved


def _confined(raw: str, roots: Sequence[Path]) -> Path:
    if not roots:
        raise InvalidRequest(NO_ROOTS, field="source")
    # Syntax only (reveals nothing about the filesystem): "~" would be the server's home,
    # a relative path the server's working directory.
    if raw.startswith("~") or not os.path.isabs(raw):
        raise InvalidRequest("source: must be an absolute path", field="source")
    try:
        resolved = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise InvalidRequest(NOT_ALLOWED, field="source") from None
    allowed = (
        any(resolved.is_relative_to(root) for root in resolved_roots(roots))
        and not is_pseudo_filesystem(resolved)
        and (resolved.is_dir() or resolved.is_file())
        and os.access(resolved, os.R_OK)
    )
    if not allowed:
        raise InvalidRequest(NOT_ALLOWED, field="source")
    return resolved


def resolved_roots(roots: Iterable[Path]) -> list[Path]:
    """The roots that exist, after ``realpath`` (a symlinked root is its target)."""
    found = []
    for root in roots:
        try:
            found.append(root.resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    return found
