"""Structured context carried by context variables.

The fields bound here (job_id, project_id, module, ...) are attached to every log
record written while they are bound. Context variables are copied into each anyio
task and into ``anyio.to_thread.run_sync`` workers, so fields bound before a fan-out
reach the module tasks and their worker threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = ["bind", "bound", "current_fields"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_fields: ContextVar[Mapping[str, Any]] = ContextVar("orchestrator_log_fields", default=_EMPTY)


def current_fields() -> Mapping[str, Any]:
    """The fields bound in the current context."""
    return _fields.get()


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Bind fields for the duration of a ``with`` block (None values are skipped)."""
    merged = {**_fields.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _fields.set(MappingProxyType(merged))
    try:
        yield merged
    finally:
        _fields.reset(token)


def bind(**fields: Any) -> None:
    """Bind fields for the rest of the current context (a task or a thread's run)."""
    _fields.set(MappingProxyType({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}}))
