"""The canonical form of every value a job stores.

Jobs meet values our stores cannot hold as they come: file names that are not UTF-8
(Python hands them over as lone surrogates), NUL bytes in analysed text, NaN from a
module's arithmetic, JSON nested deeper than any parser likes. PostgreSQL refuses NUL
in text and ``\\u0000`` or lone surrogates in jsonb; SQLite stores them, and then the API
cannot encode them. So every value passes through :func:`canonical_json` or
:func:`canonical_text` at the one place values enter the store, and both stores hold the
same thing. The rules, decided once:

* **Text**: a NUL becomes the four characters ``\\x00``; a lone surrogate that stands
  for an undecodable byte (U+DC80..U+DCFF, Python's ``surrogateescape``) becomes
  ``\\xNN`` with that byte, so ``bad\\xff.py`` reads as the bytes on disk; any other lone
  surrogate becomes ``\\uXXXX``. Everything else is kept as is.
* **Numbers**: NaN and the infinities become the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` (JSON has no such numbers); ``-0.0`` becomes ``0.0``; an integral float
  of magnitude 1e16 or more becomes the integer it equals (PostgreSQL's numeric would
  print it without a decimal point, and it would come back as an integer anyway).
* **Structure**: mappings with text keys and lists; tuples become lists, other objects
  their ``str``; nesting deeper than :data:`MAX_DEPTH` is cut and replaced by a marker.

Client input is held to a stricter rule (:func:`check_client_json`): what cannot be
stored as given is refused with the field's path, before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from orchestrator.domain.errors import InvalidRequest

__all__ = [
    "CLIENT_MAX_DEPTH",
    "MAX_DEPTH",
    "MAX_REASON_CHARS",
    "MAX_STORED_INT",
    "canonical_json",
    "canonical_reason",
    "canonical_text",
    "check_client_json",
    "check_client_text",
    "storable",
]

#: Deepest nesting a stored JSON value keeps (deeper parts are replaced by a marker).
MAX_DEPTH: Final = 64
#: Deepest nesting client input may have (a 422 beyond).
CLIENT_MAX_DEPTH: Final = 32
#: Longest reason stored (longer ones are cut, with a marker).
MAX_REASON_CHARS: Final = 2000
#: The largest integer a store keeps (BIGINT, SQLite INTEGER): times, sequence numbers.
MAX_STORED_INT: Final = (1 << 63) - 1
#: Integral floats this large print without a decimal point in PostgreSQL's numeric.
_INTEGRAL_FLOAT_LIMIT: Final = 1e16
_TRUNCATED: Final = "<truncated: nested deeper than 64 levels>"

_NEEDS_ESCAPE: Final = re.compile("[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code == 0:
        return "\\x00"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def canonical_text(value: str) -> str:
    """``value`` with NUL and lone surrogates written as escapes (see the module doc)."""
    return _NEEDS_ESCAPE.sub(_escape, value) if _NEEDS_ESCAPE.search(value) else value


def storable(value: str) -> bool:
    """True when ``value`` is already in canonical form (no NUL, no lone surrogate): a
    lookup by any other value can match nothing stored."""
    return _NEEDS_ESCAPE.search(value) is None


def canonical_reason(value: str) -> str:
    """A reason as stored: canonical text, at most :data:`MAX_REASON_CHARS` characters."""
    text = canonical_text(value)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 12] + " [truncated]"
    return text


def _number(value: float) -> float | int | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return 0.0
    if abs(value) >= _INTEGRAL_FLOAT_LIMIT and value.is_integer():
        return int(value)
    return value


def canonical_json(value: Any, *, depth: int = 0, strict: bool = False) -> Any:
    """``value`` as a JSON-compatible structure both stores hold identically. With
    ``strict``, a value that is not JSON-like (an object, a set) raises TypeError instead
    of becoming its ``str``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return canonical_text(value)
    if depth >= MAX_DEPTH:
        return _TRUNCATED
    if isinstance(value, Mapping):
        if not strict:
            return {canonical_text(str(k)): canonical_json(v, depth=depth + 1, strict=strict) for k, v in value.items()}
        found: dict[str, Any] = {}
        for k, v in value.items():
            if not (k is None or isinstance(k, (str, int, float))):
                raise TypeError(f"a key of type {type(k).__name__} is not a JSON object key")
            key = canonical_text(str(k))
            if key in found:  # one of the two would be lost without a word
                raise ValueError("two keys of one object are the same text once stored (such as 1 and '1')")
            found[key] = canonical_json(v, depth=depth + 1, strict=strict)
        return found
    if isinstance(value, (list, tuple)):
        return [canonical_json(v, depth=depth + 1, strict=strict) for v in value]
    if strict:
        raise TypeError(f"{type(value).__name__} is not a JSON value")
    return canonical_text(str(value))


def check_client_text(value: str, field: str) -> None:
    """Refuse text a client sent that cannot be stored as given."""
    if "\x00" in value:
        raise InvalidRequest(f"{field}: contains a NUL character", field=field)
    if _NEEDS_ESCAPE.search(value):
        raise InvalidRequest(f"{field}: contains a lone surrogate (not valid Unicode)", field=field)


def check_client_json(value: Any, field: str, *, depth: int = 0) -> None:
    """Refuse JSON a client sent that cannot be stored as given: nesting deeper than
    :data:`CLIENT_MAX_DEPTH`, NaN or infinities, NUL or lone surrogates in text or keys.
    The error names the path of the offending value (``options.module_options.x.y``)."""
    if isinstance(value, str):
        check_client_text(value, field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{field}: {value} is not a JSON number (NaN and infinities are refused)", field=field)
    elif isinstance(value, (Mapping, list, tuple)):
        if depth >= CLIENT_MAX_DEPTH:
            raise InvalidRequest(f"{field}: nested deeper than {CLIENT_MAX_DEPTH} levels", field=field)
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                check_client_text(key, f"{field}.{key!r}")
            check_client_json(item, f"{field}.{key}", depth=depth + 1)
