"""Spans as the embedded default exported them: ``<data dir>/telemetry/traces.jsonl`` and
its rotated backups, in the OTLP/JSON encoding, read back for ``trace`` and ``report``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel.files import SIGNAL_FILES, read_jsonl
from otel.vocabulary import Attr

__all__ = ["Event", "Span", "job_trace", "load_spans"]

_STATUS_ERROR = 2


@dataclass
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event]
    status_code: int
    status_message: str
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def is_error(self) -> bool:
        return self.status_code == _STATUS_ERROR


def _value(v: Mapping[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items}


def load_spans(telemetry_dir: Path) -> Iterator[Span]:
    for request in read_jsonl(telemetry_dir / SIGNAL_FILES["traces"]):
        for resource_spans in request.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for s in scope_spans.get("spans", []):
                    yield Span(
                        trace_id=s.get("traceId", ""),
                        span_id=s.get("spanId", ""),
                        parent_id=s.get("parentSpanId", ""),
                        name=s.get("name", ""),
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes=_attrs(s.get("attributes", [])),
                        events=[
                            Event(e.get("name", ""), int(e.get("timeUnixNano", 0)), _attrs(e.get("attributes", [])))
                            for e in s.get("events", [])
                        ],
                        status_code=int(s.get("status", {}).get("code", 0)),
                        status_message=s.get("status", {}).get("message", ""),
                    )


def job_trace(spans: Iterable[Span], job_id: str, trace_id: str | None = None) -> list[Span]:
    """Every span of the job's trace.

    With ``trace_id`` (from the store), exactly that trace. Without it, the trace of the
    job's own spans: only spans named ``job``/``job.*`` count, so a caller's trace that
    mentions the job (the HTTP request that created it) is not taken for the job's.
    """
    spans = list(spans)
    if trace_id is None:
        mine = [s for s in spans if s.attributes.get(Attr.JOB_ID) == job_id and _job_span(s.name)]
        roots = [s for s in mine if s.name == "job"]
        trace_ids = {s.trace_id for s in (roots or mine)}
    else:
        trace_ids = {trace_id}
    return [s for s in spans if s.trace_id in trace_ids]


def _job_span(name: str) -> bool:
    return name == "job" or name.startswith("job.")
