"""Structured context carried by context variables.

The fields bound here (job_id, project_id, module, ...) are attached to every log
record written while they are bound. Context variables are copied into each anyio
task and into ``anyio.to_thread.run_sync`` workers, so fields bound before a fan-out
reach the module tasks and their worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

__all__ = ["bind", "bound", "current_fields", "pop", "push"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_fields: ContextVar[Mapping[str, Any]] = ContextVar("orchestrator_log_fields", default=_EMPTY)
_MISSING = object()

#: What :func:`push` returns and :func:`pop` takes: None when the fields were bound already.
Pushed = Token[Mapping[str, Any]] | None


def current_fields() -> Mapping[str, Any]:
    """The fields bound in the current context."""
    return _fields.get()


def push(fields: Mapping[str, Any]) -> Pushed:
    """Bind ``fields`` (None values skipped) until :func:`pop` is given what this returns.

    Binding what is bound already (the same objects) changes nothing and sets nothing: a
    job's fields, bound by the worker that runs it, are bound again by each entry point the
    job passes. Compared by identity: a value's own ``__eq__`` is never called."""
    current = _fields.get()
    merged: dict[str, Any] | None = None
    for name, value in fields.items():
        if value is not None and current.get(name, _MISSING) is not value:
            if merged is None:
                merged = dict(current)
            merged[name] = value
    return None if merged is None else _fields.set(MappingProxyType(merged))


def pop(pushed: Pushed) -> None:
    """Unbind what :func:`push` bound (in the same context, innermost first)."""
    if pushed is not None:
        _fields.reset(pushed)


class bound:
    """Bind fields for the duration of a ``with`` block (None values are skipped)."""

    __slots__ = ("_fields", "_pushed")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._pushed: Pushed = None

    def __enter__(self) -> None:
        self._pushed = push(self._fields)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        pop(self._pushed)


def bind(**fields: Any) -> None:
    """Bind fields for the rest of the current context (a task or a thread's run)."""
    push(fields)
