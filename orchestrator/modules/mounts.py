"""Pseudo-filesystems: never analysed, never descended into.

Reading ``/proc/kmsg`` blocks forever, ``/sys`` and ``/dev`` hold device state and
files whose reads have side effects or never end, and ``/proc`` is a window on every
process. A tree can contain one anywhere (a bind mount of ``/proc`` inside a project, a
container root), so the walker does not go by path: it asks the kernel which devices
carry pseudo-filesystems (``/proc/self/mountinfo``: each mount's ``major:minor`` and
filesystem type) and refuses any directory or file whose ``st_dev`` is one of them.
A bind mount keeps the device of what it binds, so it is caught wherever it is.

Where ``/proc/self/mountinfo`` cannot be read (not Linux, or ``/proc`` not mounted),
the well-known paths are refused by name instead.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["PSEUDO_FS_TYPES", "PSEUDO_PATHS", "PseudoFilesystems", "parse_mountinfo"]

#: Filesystem types whose files are not data: kernel and process state, devices,
#: control files. tmpfs is not among them: it holds ordinary files.
PSEUDO_FS_TYPES: Final = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "securityfs",
        "debugfs",
        "tracefs",
        "configfs",
        "fusectl",
        "mqueue",
        "pstore",
        "bpf",
        "binfmt_misc",
        "efivarfs",
        "rpc_pipefs",
        "nsfs",
        "selinuxfs",
        "autofs",
        "hugetlbfs",
    }
)

#: Refused by name when the mount table cannot be read.
PSEUDO_PATHS: Final = (Path("/proc"), Path("/sys"), Path("/dev"))

MOUNTINFO: Final = Path("/proc/self/mountinfo")
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    device: int
    mount_point: str
    fs_type: str


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text (malformed lines are skipped).

    Format (proc(5)): ``id parent major:minor root mount_point options [optional...] -
    fs_type source super_options``; the optional fields end at a lone ``-``.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            major, minor = (int(part) for part in fields[2].split(":"))
            fs_type = fields[separator + 1]
        except (ValueError, IndexError):
            continue
        mount_point = _unescape(fields[4])
        mounts.append(Mount(os.makedev(major, minor), mount_point, fs_type))
    return mounts


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134.
    return _OCTAL.sub(lambda match: chr(int(match[1], 8)), field)


class PseudoFilesystems:
    """Which devices (``st_dev``) carry pseudo-filesystems, read once per walk."""

    def __init__(self, devices: Iterable[int], *, by_path: bool = False) -> None:
        self.devices = frozenset(devices)
        #: True when the mount table was unavailable: refuse the well-known paths instead.
        self.by_path = by_path

    @classmethod
    def current(cls) -> PseudoFilesystems:
        """This process's pseudo-filesystems, from the mount table as it is now (read each
        time; parsed again only when it changed: every job's walk asks)."""
        try:
            text = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return cls((), by_path=True)
        return _parsed(text)

    @classmethod
    def from_mounts(cls, mounts: Iterable[Mount]) -> PseudoFilesystems:
        return cls(mount.device for mount in mounts if mount.fs_type in PSEUDO_FS_TYPES)

    def is_pseudo(self, path: str | Path, info: os.stat_result) -> bool:
        """Whether ``path`` (with its ``lstat``/``stat`` result) lives on a pseudo-filesystem."""
        if info.st_dev in self.devices:
            return True
        if self.by_path:
            absolute = Path(path).absolute()
            return any(absolute == root or root in absolute.parents for root in PSEUDO_PATHS)
        return False


@functools.lru_cache(maxsize=4)
def _parsed(mountinfo: str) -> PseudoFilesystems:
    return PseudoFilesystems.from_mounts(parse_mountinfo(mountinfo))
