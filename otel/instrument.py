"""``@instrument``: structured context at the start and finish of a public entry point.

The counterpart of Rust's ``#[instrument]``. It binds the entry point's context fields
(job_id, project_id, module, ...) for everything logged inside it, logs
``operation.start`` and ``operation.finish`` with the elapsed time, and logs
``operation.error`` with the error's category when the call raises. Expensive work
(the logger, the coroutine check) happens once, at decoration time.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from otel import context, logs
from otel.vocabulary import Attr, OperationEvent

__all__ = ["instrument", "mark_logged"]

P = ParamSpec("P")
R = TypeVar("R")

FieldsFn = Callable[..., Mapping[str, Any]]


def instrument(
    operation: str,
    *,
    fields: FieldsFn | None = None,
    level: int = logging.INFO,
    logger: logging.Logger | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a public entry point named ``operation``.

    ``fields`` receives the call's arguments and returns the context fields to bind.
    Errors with a ``context()`` method (the project's typed errors) contribute their
    fields to the error record; their category decides nothing about control flow.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        log = logger or logging.getLogger(fn.__module__)
        signature = inspect.signature(fn)
        positional = _positional_names(signature)
        names = frozenset(signature.parameters)

        def bind_fields(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
            if fields is None:
                return {}
            if (
                positional is not None
                and len(args) <= len(positional)
                and kwargs.keys() <= names
                and not kwargs.keys() & positional[: len(args)]
            ):
                # What bind_partial would find, without its general (and slow) walk: the
                # positional arguments by name, then the keywords.
                return fields(**dict(zip(positional, args, strict=False)), **kwargs)
            bound = signature.bind_partial(*args, **kwargs)
            return fields(**bound.arguments)

        def on_error(exc: BaseException, started: float) -> None:
            elapsed = _elapsed_ms(started)
            context_of = getattr(exc, "context", None)
            typed = callable(context_of)
            extra: dict[str, Any] = dict(context_of()) if callable(context_of) else {Attr.ERROR: str(exc)}
            extra.setdefault(Attr.ERROR_TYPE, type(exc).__name__)
            # A caller's mistake is information; an expected failure (typed) a warning;
            # anything else is a bug, logged with its traceback.
            # One report per error: once logged (at its source or by an inner entry
            # point), outer entry points only record their finish at debug level.
            if getattr(exc, _LOGGED, False):
                error_level = logging.DEBUG
            elif extra.get(Attr.ERROR_CATEGORY) == _VALIDATION:
                error_level = max(level, logging.INFO)
            else:
                error_level = logging.WARNING if typed else logging.ERROR
            mark_logged(exc)
            logs.event(
                log,
                error_level,
                OperationEvent.ERROR,
                f"{operation} failed after {elapsed} ms: {exc}",
                exc_info=None if typed else exc,
                operation=operation,
                elapsed_ms=elapsed,
                **extra,
            )

        def started(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[context.Pushed, float]:
            """A call begins: its fields bound, its start logged."""
            pushed = context.push(bind_fields(args, kwargs))
            if log.isEnabledFor(level):
                logs.event(log, level, OperationEvent.START, f"{operation} started", operation=operation)
            return pushed, time.perf_counter()

        def finished(started: float) -> None:
            if log.isEnabledFor(level):
                elapsed = _elapsed_ms(started)
                logs.event(
                    log,
                    level,
                    OperationEvent.FINISH,
                    f"{operation} finished in {elapsed} ms",
                    operation=operation,
                    elapsed_ms=elapsed,
                )

        # Two thin wrappers around the same report (plain try blocks: a context manager
        # per call costs more than the report when it is not logged): a coroutine
        # function must stay one (awaited inside the report), a plain function must not
        # become one.
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                pushed, began = started(args, kwargs)
                try:
                    result = await async_fn(*args, **kwargs)
                except Exception as exc:
                    on_error(exc, began)
                    raise
                else:
                    finished(began)
                    return result
                finally:
                    context.pop(pushed)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            pushed, began = started(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                on_error(exc, began)
                raise
            else:
                finished(began)
                return result
            finally:
                context.pop(pushed)

        return sync_wrapper

    return decorate


def _positional_names(signature: inspect.Signature) -> tuple[str, ...] | None:
    """The names positional arguments bind to, in order, when every parameter is a plain
    one (no ``*args``, ``**kwargs`` or positional-only parameter); else None."""
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind not in plain for p in signature.parameters.values()):
        return None
    return tuple(p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


_LOGGED = "_orchestrator_logged"
#: ErrorCategory.VALIDATION's value (otel imports nothing of the domain but its event names).
_VALIDATION = "validation"


def mark_logged(exc: BaseException) -> None:
    """Record that ``exc`` has been logged, so the entry points it passes through don't
    log it again."""
    with contextlib.suppress(AttributeError):
        setattr(exc, _LOGGED, True)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
