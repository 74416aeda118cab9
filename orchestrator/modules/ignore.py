"""What the walker leaves out: default ignores, the project's ``.gitignore`` files and a
job's own patterns, all in gitignore syntax (matched by ``pathspec``).

Precedence, highest first, the first rule set with an opinion deciding (as git does
for its own sources): the job's ``ignore`` patterns, then the ``.gitignore`` files from
the deepest directory up to the source root, then the defaults. So a job can bring
back what the defaults or the project ignore (``!build/``), and a project can bring
back a default (``!dist/`` in its ``.gitignore``).

Patterns are matched per entry of a walk of up to hundreds of thousands of entries, so
plain names (``node_modules/``, ``.git/``) are looked up in a set; only patterns with
globs, slashes or negations go through ``pathspec``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import pathspec

__all__ = [
    "DEFAULT_IGNORES",
    "VIRTUALENV_MARKER",
    "IgnoreRules",
    "InvalidPattern",
    "RuleSet",
    "check_patterns",
]

#: VCS metadata, dependency and tool caches, virtualenvs by their usual names, build
#: outputs and our own state: huge, not the project's own code, and they would drown
#: the findings. Any directory holding a ``pyvenv.cfg`` is skipped too (a virtualenv,
#: whatever its name).
DEFAULT_IGNORES: Final = (
    ".git/",
    ".hg/",
    ".svn/",
    ".bzr/",
    "_darcs/",
    "CVS/",
    "node_modules/",
    "bower_components/",
    "__pycache__/",
    ".venv/",
    "venv/",
    ".tox/",
    ".nox/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".eggs/",
    ".gradle/",
    ".next/",
    ".terraform/",
    "build/",
    "dist/",
    "target/",
    ".orchestrator/",
)
VIRTUALENV_MARKER: Final = "pyvenv.cfg"

#: Longest pattern and most patterns accepted from a job or a setting.
MAX_PATTERN_CHARS: Final = 1024
MAX_PATTERNS: Final = 256
_GLOB: Final = re.compile(r"[*?\[\\]")
#: What pathspec raises for a line it cannot compile: its own ValueError, or the regular
#: expression's error for a bracket it translates as is (``[z-a]``: a reversed range).
_PATTERN_ERRORS: Final = (ValueError, TypeError, re.error)


class InvalidPattern(ValueError):
    """A pattern that is not valid gitignore syntax (or too long, or has control characters)."""


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns, checked: a readable :class:`InvalidPattern` for the first bad one."""
    checked = list(patterns)
    if len(checked) > MAX_PATTERNS:
        raise InvalidPattern(f"at most {MAX_PATTERNS} patterns")
    for pattern in checked:
        if len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidPattern(f"pattern longer than {MAX_PATTERN_CHARS} characters")
        if any(ord(char) < 32 for char in pattern):
            raise InvalidPattern(f"pattern {pattern[:40]!r} contains a control character")
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except _PATTERN_ERRORS as exc:
            raise InvalidPattern(f"pattern {pattern[:40]!r}: {exc}") from None
    return checked


def _valid(*lines: str) -> bool:
    try:
        pathspec.GitIgnoreSpec.from_lines(lines)
    except _PATTERN_ERRORS:
        return False
    return True


def _plain_name(line: str) -> tuple[str, bool] | None:
    """``(name, dir_only)`` for a pattern that is just a name at any depth, else None."""
    body = line.strip()
    dir_only = body.endswith("/")
    body = body.rstrip("/")
    if not body or body.startswith(("!", "#")) or "/" in body or _GLOB.search(body):
        return None
    return body, dir_only


@dataclass(frozen=True)
class RuleSet:
    """One list of gitignore patterns, relative to one directory of the tree.

    :meth:`check` answers True (ignored), False (re-included by a ``!`` pattern) or
    None (no pattern matches). Without negations, plain names go to a set lookup.
    """

    names_any: frozenset[str]
    names_dir: frozenset[str]
    spec: pathspec.GitIgnoreSpec | None

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, strict: bool = True) -> RuleSet:
        """The rule set of ``lines``; with ``strict=False`` (a project's own
        ``.gitignore``) invalid lines are dropped, as git drops them, instead of raising."""
        kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not strict and not _valid(*kept):
            kept = [line for line in kept if _valid(line)]
        if any(line.lstrip().startswith("!") for line in kept):
            # Order matters once a pattern can re-include: leave it all to pathspec.
            return cls(frozenset(), frozenset(), pathspec.GitIgnoreSpec.from_lines(kept))
        names_any: set[str] = set()
        names_dir: set[str] = set()
        rest = []
        for line in kept:
            plain = _plain_name(line)
            if plain is None:
                rest.append(line)
            else:
                (names_dir if plain[1] else names_any).add(plain[0])
        spec = pathspec.GitIgnoreSpec.from_lines(rest) if rest else None
        return cls(frozenset(names_any), frozenset(names_dir), spec)

    @property
    def empty(self) -> bool:
        return not (self.names_any or self.names_dir or self.spec)

    def check(self, relpath: str, name: str, is_dir: bool) -> bool | None:
        if name in self.names_any or (is_dir and name in self.names_dir):
            return True
        if self.spec is None:
            return None
        result = self.spec.check_file(relpath + "/" if is_dir else relpath)
        return result.include


@dataclass(frozen=True)
class _Scoped:
    """A rule set read from ``<base>/.gitignore`` (``base`` relative to the source, "" at the root)."""

    base: str
    rules: RuleSet


class IgnoreRules:
    """The job's rules; :meth:`descend` adds a directory's ``.gitignore``."""

    def __init__(
        self,
        defaults: Sequence[str] = DEFAULT_IGNORES,
        extra: Sequence[str] = (),
        *,
        skip_virtualenvs: bool = True,
        gitignores: tuple[_Scoped, ...] = (),
    ) -> None:
        self._defaults = RuleSet.from_lines(defaults)
        self._extra = RuleSet.from_lines(extra)
        self.skip_virtualenvs = skip_virtualenvs
        self._gitignores = gitignores

    def descend(self, base: str, gitignore_text: str) -> IgnoreRules:
        """The rules inside directory ``base``, whose ``.gitignore`` says ``gitignore_text``."""
        rules = RuleSet.from_lines(gitignore_text.splitlines(), strict=False)
        if rules.empty:
            return self
        child = object.__new__(IgnoreRules)
        child._defaults, child._extra, child.skip_virtualenvs = self._defaults, self._extra, self.skip_virtualenvs
        child._gitignores = (_Scoped(base, rules), *self._gitignores)  # deepest first
        return child

    def ignored(self, relpath: str, name: str, is_dir: bool) -> bool:
        """Whether the entry at ``relpath`` (relative to the source, POSIX) is left out."""
        verdict = self._extra.check(relpath, name, is_dir)
        if verdict is not None:
            return verdict
        for scoped in self._gitignores:
            inner = relpath[len(scoped.base) + 1 :] if scoped.base else relpath
            verdict = scoped.rules.check(inner, name, is_dir)
            if verdict is not None:
                return verdict
        return bool(self._defaults.check(relpath, name, is_dir))
