"""``secrets``: find credential-shaped strings in the project's text files.

The summary is stored and displayed, so it must never become a second copy of
the leaked secret: findings carry the location, the rule and a redacted preview
only, never the matched value or the line around it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from orchestrator.modules.base import BaseModule, ModuleContext
from orchestrator.modules.files import WalkStats, check_source, display_path, iter_files, read_text

__all__ = ["RULES", "SecretsModule", "redact", "redact_secrets", "scan_secrets"]

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


def _line_starts(text: str) -> list[int]:
    return [0, *(match.end() for match in re.finditer("\n", text))]


def _scan_text(text: str, path: str) -> list[_Finding]:
    starts = _line_starts(text)
    taken: list[tuple[int, int]] = []
    findings: list[_Finding] = []
    for rule, pattern in RULES.items():
        for match in pattern.finditer(text):
            span = match.span("secret")
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            taken.append(span)
            line = bisect.bisect_right(starts, span[0])
            findings.append(_Finding(path, line, rule, redact(match.group("secret"))))
    return sorted(findings, key=lambda finding: finding.line)


def scan_secrets(source: Path, ctx: ModuleContext) -> dict[str, Any]:
    check_source(source, ctx.module)
    stats = WalkStats()
    scanned = 0
    counts = dict.fromkeys(RULES, 0)
    findings: list[dict[str, Any]] = []
    for path in iter_files(source, ctx=ctx, stats=stats):
        text = read_text(path, stats=stats)
        if text is None:
            continue
        scanned += 1
        for finding in _scan_text(text, display_path(path, source)):
            counts[finding.rule] += 1
            if len(findings) < MAX_FINDINGS:
                findings.append(finding.as_dict())
    total = sum(counts.values())
    return {
        "files_scanned": scanned,
        "total_findings": total,
        "counts_by_rule": counts,
        "findings": findings,
        "findings_truncated": total > len(findings),
        "walk": stats.as_dict(),
    }


class SecretsModule(BaseModule):
    name: ClassVar[str] = "secrets"
    version: ClassVar[str] = "1.0.0"
    # Deliberately tight: the demo shows a large project overrunning it (a warning).
    expected_runtime: ClassVar[float] = 0.5
    timeout: ClassVar[float] = 60.0
    description: ClassVar[str] = "Finds credential-shaped strings (keys, tokens, passwords), redacted."

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return await context.run_sync(scan_secrets, context.source, context)
