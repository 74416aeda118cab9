"""Span ids: forced ones for a job's root, deterministic ones for every other job span.

A job's root span is emitted by whichever process performs its terminal transition,
long after its trace id and root span id were chosen and persisted at creation. The
SDK takes span ids from the provider's id generator, so the root is started inside
:func:`forced_ids`, which makes the generator return the persisted ids.

Every other span the store can describe (create, each queue wait, each execute attempt,
each module run, each finalize) gets an id derived from the trace id and the span's
place in the job (:func:`span_id_for`): the live span and a span rebuilt from the store
later (when the live one was lost) carry the same ids, so a tracing backend sees one
span, not two.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

__all__ = ["JobIdGenerator", "SpanPlace", "forced_ids", "span_id_for"]

_forced: ContextVar[tuple[int, int] | None] = ContextVar("otel_forced_ids", default=None)

#: Domain separation: ids of this scheme never collide with another use of the hash.
_KEY: Final = b"orchestrator.span-id.v1"


class SpanPlace(enum.StrEnum):
    """Where a span sits in a job (with the attempt and, for a module, its name)."""

    CREATE = "create"
    QUEUED = "queued"
    EXECUTE = "execute"
    MODULE = "module"
    FINALIZE = "finalize"


def span_id_for(trace_id: int | str, place: SpanPlace, attempt: int = 0, module: str = "") -> int:
    """The span id of the span at ``place`` of attempt ``attempt`` (and ``module``) in
    the trace ``trace_id``: a keyed hash truncated to 64 bits, never 0 (an invalid id).

    The create span is once per job (``attempt`` 0); queued, execute, module and
    finalize spans are once per attempt.
    """
    tid = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
    return _span_id(tid, str(place), attempt, module)


@functools.lru_cache(maxsize=4096)
def _span_id(tid: int, place: str, attempt: int, module: str) -> int:
    """:func:`span_id_for`, remembered: a job asks for each of its ids several times
    (the live span, its record at the root's emission, the delivery ledger)."""
    # Fixed-width fields, a separator no place name holds, then the module's name: no
    # two places hash the same message.
    name = module.encode("utf-8", "surrogatepass")
    message = b"".join(
        (tid.to_bytes(16, "big"), place.encode(), b"\x00", attempt.to_bytes(8, "big", signed=True), name)
    )
    digest = hashlib.blake2b(message, digest_size=8, key=_KEY).digest()
    return int.from_bytes(digest, "big") or 1


@contextlib.contextmanager
def forced_ids(trace_id: int, span_id: int) -> Iterator[None]:
    """The next span started in this context gets exactly these ids (a child span keeps
    its parent's trace id: only ``span_id`` applies to it)."""
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
