"""Telemetry for the orchestrator: the event vocabulary, structured logging, the
``instrument`` decorator and the OpenTelemetry providers' setup."""

from __future__ import annotations

__all__: list[str] = []
