"""The embedded default: spans, logs and metrics as OTLP JSON lines in local files.

Each export writes one line: an OTLP ``Export*ServiceRequest`` in the OTLP/JSON
encoding (ids in hex, as the OTLP specification asks, not protobuf's base64). Files
rotate at a size limit and keep a bounded number of backups, so disk use is bounded.
A full or read-only disk degrades to a rate-limited warning, never an exception.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel import logs
from otel.otlp_json import encode_logs_json, encode_spans_json
from otel.vocabulary import OperationEvent

__all__ = [
    "FileLogExporter",
    "FileMetricExporter",
    "FileSpanExporter",
    "JsonlWriter",
    "read_jsonl",
    "to_otlp_json",
]

log = logging.getLogger(__name__)

_ID_FIELDS: Final = frozenset({"traceId", "spanId", "parentSpanId"})
SIGNAL_FILES: Final = {"traces": "traces.jsonl", "logs": "logs.jsonl", "metrics": "metrics.jsonl"}


def to_otlp_json(message: Message) -> dict[str, Any]:
    """A protobuf OTLP request as OTLP/JSON (hex ids, camelCase, enum numbers)."""
    data: dict[str, Any] = MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(data)
    return data


def _hex_ids(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


class JsonlWriter:
    """Appends lines to ``path``, rotating to ``path.1`` ... ``path.N`` past ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int = 32 * 1024 * 1024, backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.failures = 0
        self._lock = threading.Lock()
        self._warn = logs.RateLimitedLog(30.0)

    def write(self, line: str) -> bool:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                    self._rotate()
                # A line cut short (a full disk, a process killed mid-write, here or in
                # another process sharing the file) must not swallow this one: it starts on
                # a line of its own.
                if not _ends_a_line(self.path):
                    data = b"\n" + data
                with self.path.open("ab") as fh:
                    fh.write(data)
                return True
            except OSError as exc:
                self.failures += 1
                if self._warn.ready():
                    logs.event(
                        log,
                        logging.WARNING,
                        OperationEvent.TELEMETRY_EXPORT_FAILED,
                        f"cannot write telemetry file {self.path}: {exc}; telemetry is being dropped",
                        path=str(self.path),
                        failures=self.failures,
                        suppressed=self._warn.take_suppressed(),
                    )
                return False

    def _rotate(self) -> None:
        for index in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            newer = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            if newer.exists():
                os.replace(newer, older)


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is empty, missing or ends with a newline (or cannot be read back,
    a pipe say: then nothing is added; a pipe is not even opened, which would block)."""
    try:
        if not path.is_file():
            return True
        with path.open("rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return True
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
    except OSError:
        return True


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of ``path`` and its rotated backups, oldest first; bad lines skipped."""
    # Only the writer's backups (path.1 ... path.N), by number: any other file beside them
    # (an editor's .orig, a copy's .bak) is not ours to read.
    numbered = [(int(p.suffix[1:]), p) for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    backups = [p for _, p in sorted(numbered, key=lambda item: -item[0])]
    for candidate in [*backups, path]:
        if not candidate.is_file():
            continue
        with candidate.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash or a full disk


class FileSpanExporter(SpanExporter):
    def __init__(self, writer: JsonlWriter) -> None:
        self._writer = writer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json.dumps(encode_spans_json(spans), separators=(",", ":"))
        return SpanExportResult.SUCCESS if self._writer.write(line) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class FileLogExporter(LogRecordExporter):
    def __init__(self, writer: JsonlWriter) -> None:
        self._writer = writer

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        line = json.dumps(encode_logs_json(batch), separators=(",", ":"))
        return LogRecordExportResult.SUCCESS if self._writer.write(line) else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class FileMetricExporter(MetricExporter):
    def __init__(self, writer: JsonlWriter) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})
        self._writer = writer

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        line = json.dumps(to_otlp_json(encode_metrics(metrics_data)), separators=(",", ":"))
        return MetricExportResult.SUCCESS if self._writer.write(line) else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None
