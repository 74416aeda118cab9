"""A process-pool worker (``python -m orchestrator.modules.pool_worker``).

Reads frames from stdin (8-byte length, then a pickle): first the parent's
``sys.path``, then ``(function, args)`` calls; answers each call on stdout with a
status byte, a length and the pickled result or exception. Ends at end of input, which
is also what happens when the parent dies. Deliberately imports almost nothing: the
functions it is given import what they need.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import IO, Any

_REQUEST = struct.Struct(">Q")
_RESULT = struct.Struct(">BQ")


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_REQUEST.size)
    if len(header) < _REQUEST.size:
        return None
    (length,) = _REQUEST.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _answer(stream: IO[bytes], status: int, value: Any) -> None:
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception is still an answer
        status, data = 1, pickle.dumps(RuntimeError(f"result could not be sent back: {exc!r}"))
    stream.write(_RESULT.pack(status, len(data)) + data)
    stream.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the parent decides what stops (it kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    # What the analysed code or an analyzer prints must not corrupt the answers.
    sys.stdin = open(os.devnull)  # noqa: SIM115 - for the life of the process
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    answers.write(b"READY\n")
    answers.flush()
    paths = _read_frame(requests)
    if paths is None:
        return
    sys.path[:] = pickle.loads(paths)  # noqa: S301 - from our parent
    while (frame := _read_frame(requests)) is not None:
        try:
            function, args = pickle.loads(frame)  # noqa: S301 - from our parent
            _answer(answers, 0, function(*args))
        except Exception as exc:  # noqa: BLE001 - sent back to the caller
            _answer(answers, 1, exc)


if __name__ == "__main__":
    main()
