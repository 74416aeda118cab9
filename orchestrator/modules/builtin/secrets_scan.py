"""``secrets``: find credential-shaped strings in the project's text files.

The summary is stored and displayed, so it must never become a second copy of
the leaked secret: findings carry the location, the rule and a redacted preview
only, never the matched value or the line around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, FileAnalyzer, ModuleContext
from orchestrator.modules.index import FileEntry
from orchestrator.modules.job_files import ScanResult
from orchestrator.modules.scan import FileContent

__all__ = ["BYTE_RULES", "RULES", "SecretsModule", "redact", "redact_secrets", "scan_bytes"]

MAX_FINDINGS: Final = 100

#: Rule name -> pattern; the ``secret`` group is the part that is redacted. Specific
#: rules come first: where a generic match overlaps one already found (a GitHub token
#: assigned to ``token = "..."``), only the specific one is reported.
#:
#: Each pattern starts with a literal and checks the word boundary with a lookbehind
#: *after* it (``gh(?<![A-Za-z0-9]gh)``) rather than a leading ``\b``: a leading
#: assertion disables the regex engine's literal-prefix search, ~30x slower here.
RULES: Final[dict[str, re.Pattern[str]]] = {
    "aws_access_key_id": re.compile(r"(?P<secret>A(?:KIA|SIA)(?<![A-Za-z0-9]A[KS]IA)[0-9A-Z]{16})\b"),
    "private_key": re.compile(r"(?P<secret>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
    "github_token": re.compile(r"(?P<secret>gh(?<![A-Za-z0-9]gh)[pousr]_[A-Za-z0-9]{36})\b"),
    "slack_token": re.compile(r"(?P<secret>xox(?<![A-Za-z0-9]xox)[baprs]-[A-Za-z0-9-]{10,})"),
    "jwt": re.compile(
        r"(?P<secret>eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    ),
    # password = "...", API_KEY: '...', "db_secret": "..." (JSON/YAML/.env/code). The
    # (?=[pstak]) lookahead is a cheap first-character filter for the case-insensitive
    # alternation. No [\w]* before the keyword: finditer finds it inside db_password
    # anyway, and that prefix would backtrack quadratically over long identifier runs.
    "generic_assignment": re.compile(
        r"(?i)(?=[pstak])(?:passw(?:or)?d|secret|token|api[_-]?key)[\w.-]{0,64}[\"']?\s*[:=]\s*"
        r"(?P<quote>[\"'])(?P<secret>[^\"'\r\n]{8,})(?P=quote)"
    ),
}


@dataclass(frozen=True)
class _Finding:
    path: str
    line: int
    rule: str
    preview: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "rule": self.rule, "preview": self.preview}


def redact(secret: str) -> str:
    """A preview that identifies a secret without disclosing it.

    At most the first 4 characters, and never more than a quarter of the value, so a
    short password is not half-revealed; key prefixes such as ``AKIA`` survive.
    """
    return secret[: min(4, len(secret) // 4)] + "****"


def _redact_match(match: re.Match[str]) -> str:
    start, end = match.start("secret") - match.start(), match.end("secret") - match.start()
    whole = match.group(0)
    return whole[:start] + redact(match.group("secret")) + whole[end:]


def redact_secrets(text: str) -> str:
    """``text`` with every secret-shaped value replaced by its redacted preview.

    For other modules that quote source lines (``todos``), so a secret on a quoted
    line does not leak through a summary that is not the secrets scan.
    """
    for pattern in RULES.values():
        text = pattern.sub(_redact_match, text)
    return text


#: The same rules for raw bytes: the scan runs on the file as read, without decoding it
#: (only the few matched values are decoded, for their redacted preview).
BYTE_RULES: Final[dict[str, re.Pattern[bytes]]] = {
    rule: re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE) for rule, pattern in RULES.items()
}
#: The generic rule is case-insensitive, which defeats the regex engine's literal search
#: (~5x slower than the others together). It is tried only where ``bytes.find`` finds
#: the stem of one of its keywords in a lower-cased copy (same offsets: ASCII only);
#: nearly every file has no such place, and then nothing else is searched.
_GENERIC: Final = "generic_assignment"
_GENERIC_STEMS: Final = (b"passw", b"secret", b"token", b"api")


def _generic_matches(data: bytes) -> list[re.Match[bytes]]:
    lowered = data.lower()
    starts = []
    for stem in _GENERIC_STEMS:
        position = lowered.find(stem)
        while position >= 0:
            starts.append(position)
            position = lowered.find(stem, position + 1)
    if not starts:
        return []
    starts.sort()
    pattern = BYTE_RULES[_GENERIC]
    matches: list[re.Match[bytes]] = []
    end = -1
    for start in starts:
        # As finditer would: leftmost matches that do not overlap (the pattern begins
        # with a whole keyword, so a stem that starts none fails at once).
        if start >= end and (match := pattern.match(data, start)) is not None:
            matches.append(match)
            end = match.end()
    return matches


def scan_bytes(data: bytes, path: str) -> list[_Finding]:
    """The findings in one file's bytes, specific rules first, sorted by line."""
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, str, bytes]] = []
    for rule, pattern in BYTE_RULES.items():
        matches = _generic_matches(data) if rule == _GENERIC else pattern.finditer(data)
        for match in matches:
            span = match.span("secret")
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            taken.append(span)
            found.append((span[0], rule, match.group("secret")))
    findings = []
    previous, line = 0, 1
    for offset, rule, secret in sorted(found):
        line += data.count(b"\n", previous, offset)  # in order: each byte counted once
        previous = offset
        findings.append(_Finding(path, line, rule, redact(secret.decode("utf-8", errors="replace"))))
    return findings


class _SecretsAnalyzer(FileAnalyzer[list[_Finding]]):
    def analyze(self, entry: FileEntry, content: FileContent) -> list[_Finding] | None:
        assert content.data is not None
        return scan_bytes(content.data, entry.relpath) or None


def summarise(result: ScanResult[list[_Finding]]) -> dict[str, Any]:
    counts = dict.fromkeys(RULES, 0)
    findings: list[dict[str, Any]] = []
    for _entry, file_findings in result.results:
        for finding in file_findings:
            counts[finding.rule] += 1
            if len(findings) < MAX_FINDINGS:
                findings.append(finding.as_dict())
    total = sum(counts.values())
    stats = result.stats
    return {
        "files_scanned": result.analyzed,
        "total_findings": total,
        "counts_by_rule": counts,
        "findings": findings,
        "findings_truncated": total > len(findings),
        "walk": stats.as_dict(),
    }


class SecretsModule(BaseModule):
    name: ClassVar[str] = "secrets"
    option_names: ClassVar[frozenset[str] | None] = frozenset()  # takes no options
    version: ClassVar[str] = "1.1.0"
    # Deliberately tight: the demo shows a large project overrunning it (a warning).
    expected_runtime: ClassVar[float] = 0.5
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Finds credential-shaped strings (keys, tokens, passwords), redacted."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return summarise(await context.scan(_SecretsAnalyzer()))
