"""An id generator that can be told the ids of the next span.

A job's root span is emitted by whichever process performs its terminal transition,
long after its trace id and root span id were chosen and persisted at creation. The
SDK takes span ids from the provider's id generator, so the root is started inside
:func:`forced_ids`, which makes the generator return the persisted ids once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

__all__ = ["JobIdGenerator", "forced_ids"]

_forced: ContextVar[tuple[int, int] | None] = ContextVar("otel_forced_ids", default=None)


@contextlib.contextmanager
def forced_ids(trace_id: int, span_id: int) -> Iterator[None]:
    """The next span started in this context gets exactly these ids."""
    token = _forced.set((trace_id, span_id))
    try:
        yield
    finally:
        _forced.reset(token)


class JobIdGenerator(IdGenerator):
    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced else self._random.generate_trace_id()
