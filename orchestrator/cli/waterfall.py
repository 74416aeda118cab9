"""A job's trace as a waterfall on the terminal."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

from rich.text import Text

from orchestrator.cli.spans import Span
from otel.vocabulary import Attr, LifecycleEvent, ModuleEvent, SpanName

__all__ = ["render_waterfall", "span_json"]

#: error.type values shown in words. A phase span cut by a cancellation records the
#: exception's class; what it means is that the process stopped running the attempt.
_ERROR_WORDS: Final = {"CancelledError": "interrupted", "KeyboardInterrupt": "interrupted"}
_WORKER_LOST: Final = "worker_lost"


@dataclass
class _Row:
    span: Span
    label: str
    notes: list[tuple[str, str]] = field(default_factory=list)
    children: list[_Row] = field(default_factory=list)


def _label(s: Span) -> str:
    if s.name == SpanName.MODULE:
        return f"module {s.attributes.get(Attr.MODULE, '?')}"
    if s.name == SpanName.EXECUTE:
        return f"execute (attempt {s.attributes.get(Attr.ATTEMPT, '?')})"
    if s.name == SpanName.JOB:
        return f"job {s.attributes.get(Attr.PROJECT_ID, '')} [{s.attributes.get(Attr.STATUS, '?')}]"
    return s.name.removeprefix("job.")


def _merge_lost_attempts(spans: list[Span]) -> tuple[list[Span], dict[str, Span]]:
    """An attempt whose worker stopped shows twice: the execute span the worker ended
    when it was interrupted (if it could export it) and the ``worker_lost`` span the
    reaper wrote when the lease expired. Keep one row per attempt: the worker's own span,
    with the recovery noted on it."""
    by_attempt: dict[Any, list[Span]] = defaultdict(list)
    for s in spans:
        if s.name == SpanName.EXECUTE:
            by_attempt[s.attributes.get(Attr.ATTEMPT)].append(s)
    hidden: set[str] = set()
    lost_of: dict[str, Span] = {}
    for group in by_attempt.values():
        lost = [s for s in group if s.attributes.get(Attr.ERROR_TYPE) == _WORKER_LOST]
        own = [s for s in group if s.attributes.get(Attr.ERROR_TYPE) != _WORKER_LOST]
        if lost and own:
            lost_of[own[-1].span_id] = lost[-1]
            hidden.update(s.span_id for s in lost)
    return [s for s in spans if s.span_id not in hidden], lost_of


def _tree(spans: list[Span]) -> list[Span]:
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        s.children = []
    roots = []
    for s in sorted(spans, key=lambda s: (s.start_ns, s.name != SpanName.JOB)):
        parent = by_id.get(s.parent_id)
        if parent is not None and parent is not s:
            parent.children.append(s)
        else:
            roots.append(s)
    return roots


def _overran(s: Span) -> bool:
    return any(e.name == ModuleEvent.OVERRUN for e in s.events)


def render_waterfall(spans: list[Span], *, width: int = 40) -> list[Text]:
    shown, lost_of = _merge_lost_attempts(spans)
    roots = _tree(shown)
    if not roots:
        return []
    start = min(s.start_ns for s in shown)
    end = max(s.end_ns for s in shown)
    total = max(end - start, 1)
    lines: list[Text] = []

    def bar(s: Span) -> str:
        left = min(int((s.start_ns - start) / total * width), width - 1)
        length = max(1, round((s.end_ns - s.start_ns) / total * width))
        return " " * left + "█" * min(length, width - left) + " " * max(0, width - left - length)

    def walk(s: Span, depth: int) -> None:
        style = "red" if s.is_error else ("yellow" if _overran(s) else "")
        label = ("  " * depth + _label(s))[:38].ljust(38)
        line = Text(label, style=style)
        line.append(f" {bar(s)} ", style="red" if s.is_error else "cyan")
        line.append(f"{s.duration_ms:9.1f} ms", style=style)
        error_type = s.attributes.get(Attr.ERROR_TYPE)
        if error_type:
            line.append(f"  error.type={_ERROR_WORDS.get(str(error_type), error_type)}", style="red")
        if _overran(s):
            line.append("  overrun", style="yellow")
        lost = lost_of.get(s.span_id)
        if lost is not None:
            after = (lost.end_ns - s.end_ns) / 1e6
            line.append(f"  worker lost: recovered {after:,.0f} ms later ({lost.attributes.get(Attr.REASON, '')})")
        lines.append(line)
        if s.name == SpanName.JOB:
            for e in s.events:
                offset = (e.time_ns - s.start_ns) / 1e6
                reason = e.attributes.get(Attr.REASON, "")
                event_style = "red" if e.name == LifecycleEvent.FAIL else "dim"
                lines.append(Text(f"{'  ' * (depth + 1)}@{offset:8.1f} ms  {e.name}  {reason}", style=event_style))
        for child in s.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def span_json(s: Span) -> dict[str, Any]:
    return {
        "trace_id": s.trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_id,
        "name": s.name,
        "start_ns": s.start_ns,
        "end_ns": s.end_ns,
        "duration_ms": round(s.duration_ms, 3),
        "attributes": s.attributes,
        "status_code": s.status_code,
        "status_message": s.status_message,
        "events": [{"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in s.events],
    }
