"""``@instrument`` on coroutine and plain functions alike: the same start, finish and
error records, the call's fields bound inside it, the function's identity kept."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from otel import context
from otel.instrument import instrument
from otel.logs import EVENT_KEY, record_fields

LOGGER = "orchestrator.test_instrument"


def _fields(job_id: str, **_: Any) -> dict[str, Any]:
    return {"job_id": job_id}


@instrument("test.plain", fields=_fields, logger=logging.getLogger(LOGGER))
def plain(job_id: str, *, fail: BaseException | None = None) -> dict[str, Any]:
    """A plain function."""
    if fail is not None:
        raise fail
    return dict(context.current_fields())


@instrument("test.coroutine", fields=_fields, logger=logging.getLogger(LOGGER))
async def coroutine(job_id: str, *, fail: BaseException | None = None) -> dict[str, Any]:
    """A coroutine function."""
    await anyio.sleep(0)
    if fail is not None:
        raise fail
    return dict(context.current_fields())


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return anyio.run(lambda: fn(*args, **kwargs))
    return fn(*args, **kwargs)


class Captured(logging.Handler):
    """The records of LOGGER, caught on the logger itself (whatever other tests did to
    propagation and the root logger's handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.bound_at_emit: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.bound_at_emit.append(dict(context.current_fields()))


@pytest.fixture
def caught() -> Iterator[Captured]:
    logger = logging.getLogger(LOGGER)
    handler, level, disabled = Captured(), logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False  # a dictConfig elsewhere disables the loggers that existed then
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def records(caught: Captured) -> list[tuple[str, dict[str, Any]]]:
    return [(getattr(r, EVENT_KEY), record_fields(r)) for r in caught.records]


CASES = [pytest.param(plain, "test.plain", id="plain"), pytest.param(coroutine, "test.coroutine", id="coroutine")]


@pytest.mark.parametrize(("fn", "operation"), CASES)
def test_a_call_logs_start_and_finish_with_its_fields_bound(
    caught: Captured, fn: Callable[..., Any], operation: str
) -> None:
    assert call(fn, "j-1") == {"job_id": "j-1"}  # bound while it runs
    assert context.current_fields() == {}  # and only then
    (start, started), (finish, finished) = records(caught)
    assert (start, finish) == ("operation.start", "operation.finish")
    assert started == {"operation": operation}
    assert set(finished) == {"operation", "elapsed_ms"}
    assert finished["operation"] == operation
    assert finished["elapsed_ms"] >= 0


@pytest.mark.parametrize(("fn", "operation"), CASES)
def test_an_error_is_logged_once_with_its_type_and_raised(
    caught: Captured, fn: Callable[..., Any], operation: str
) -> None:
    with pytest.raises(ValueError, match="bad value"):
        call(fn, "j-2", fail=ValueError("bad value"))
    assert [event for event, _ in records(caught)] == ["operation.start", "operation.error"]
    _, error = records(caught)[1]
    assert (error["operation"], error["error"], error["error.type"]) == (operation, "bad value", "ValueError")
    assert [r.levelno for r in caught.records if getattr(r, EVENT_KEY, None) == "operation.error"] == [logging.ERROR]


@pytest.mark.parametrize(("fn", "operation"), CASES)
def test_a_base_exception_passes_through_unreported(caught: Captured, fn: Callable[..., Any], operation: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        call(fn, "j-3", fail=KeyboardInterrupt())
    assert [event for event, _ in records(caught)] == ["operation.start"]


def test_the_wrappers_keep_what_the_function_is() -> None:
    assert inspect.iscoroutinefunction(coroutine)
    assert not inspect.iscoroutinefunction(plain)
    assert (plain.__name__, plain.__doc__) == ("plain", "A plain function.")
    assert (coroutine.__name__, coroutine.__doc__) == ("coroutine", "A coroutine function.")
    assert list(inspect.signature(plain).parameters) == ["job_id", "fail"]


def _shapes(a: int, b: int = 2, *, c: int = 3) -> int:
    return a + b + c


def _variadic(a: int, *rest: int, **more: int) -> int:
    return a + sum(rest) + sum(more.values())


def _positional_only(a: int, /, b: int = 2) -> int:
    return a + b


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        (_shapes, (1,), {}),
        (_shapes, (1, 5), {}),
        (_shapes, (1,), {"c": 7}),
        (_shapes, (), {"a": 1, "b": 5}),
        (_shapes, (1, 5), {"c": 7}),
        (_variadic, (1, 2, 3), {"x": 4}),
        (_variadic, (1,), {}),
        (_positional_only, (1, 4), {}),
        (_positional_only, (1,), {"b": 4}),
    ],
)
def test_the_fields_function_gets_the_arguments_bind_partial_finds(
    fn: Callable[..., int], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    seen: list[dict[str, Any]] = []

    def fields(**arguments: Any) -> dict[str, Any]:
        seen.append(arguments)
        return {}

    wrapped = instrument("test.shapes", fields=fields, logger=logging.getLogger(LOGGER))(fn)
    assert wrapped(*args, **kwargs) == fn(*args, **kwargs)
    assert seen == [dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)]


@pytest.mark.parametrize(("args", "kwargs"), [((1, 2, 3), {}), ((1,), {"a": 2}), ((1,), {"nope": 2})])
def test_a_call_that_does_not_fit_fails_before_its_start_record(
    caught: Captured, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    wrapped = instrument("test.shapes", fields=lambda **a: {}, logger=logging.getLogger(LOGGER))(_shapes)
    with pytest.raises(TypeError):
        wrapped(*args, **kwargs)
    assert caught.records == []


@pytest.mark.parametrize(("fn", "operation"), CASES)
def test_the_error_record_carries_the_fields_and_they_are_unbound_after(
    caught: Captured, fn: Callable[..., Any], operation: str
) -> None:
    with pytest.raises(ValueError, match="bad"):
        call(fn, "j-4", fail=ValueError("bad"))
    error = next(r for r in caught.records if getattr(r, EVENT_KEY) == "operation.error")
    assert context.current_fields() == {}
    # The record was written while the call's fields were bound (the logging layer reads
    # them from the context: the record itself holds only the call's own fields).
    assert caught.bound_at_emit[caught.records.index(error)] == {"job_id": "j-4"}


@pytest.mark.parametrize(("fn", "operation"), CASES)
def test_a_base_exception_unbinds_the_fields(caught: Captured, fn: Callable[..., Any], operation: str) -> None:
    with context.bound(run="outer"):
        with pytest.raises(KeyboardInterrupt):
            call(fn, "j-5", fail=KeyboardInterrupt())
        assert context.current_fields() == {"run": "outer"}
    assert context.current_fields() == {}


def test_binding_what_is_bound_sets_nothing_and_every_block_restores_what_it_found() -> None:
    with context.bound(job_id="j-6", project_id="p"):
        outer = context.current_fields()
        with context.bound(job_id="j-6", module=None):  # the same, and a None (skipped)
            assert context.current_fields() is outer
            with context.bound(job_id="j-7", module="m"):
                assert context.current_fields() == {"job_id": "j-7", "project_id": "p", "module": "m"}
            assert context.current_fields() is outer
        with context.bound(project_id="p", module="m"):
            assert context.current_fields() == {"job_id": "j-6", "project_id": "p", "module": "m"}
        assert context.current_fields() == {"job_id": "j-6", "project_id": "p"}
    assert context.current_fields() == {}


def test_binding_compares_values_by_identity_only() -> None:
    class Loud:
        def __eq__(self, other: object) -> bool:
            raise AssertionError("compared")

        __hash__ = object.__hash__

    first, second = Loud(), Loud()
    with context.bound(thing=first):
        bound = context.current_fields()
        with context.bound(thing=first):
            assert context.current_fields() is bound
        with context.bound(thing=second):
            assert context.current_fields()["thing"] is second
        with context.bound(thing="j-8" + str(len("x"))):  # equal strings, maybe other objects
            assert context.current_fields()["thing"] == "j-81"
        assert context.current_fields()["thing"] is first
