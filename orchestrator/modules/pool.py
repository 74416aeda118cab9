"""A small process pool for CPU-bound module work, with a lifetime of its own.

Why not ``concurrent.futures.ProcessPoolExecutor``: a task already running there cannot
be cancelled, so a cancelled job would keep its cores busy until its batch ends, and a
worker that dies breaks the whole executor. Why not ``anyio.to_process``: its workers
belong to the event loop (killed, not reaped, when the loop's root task ends) and load
the parent's ``__main__`` module again, which is the whole CLI here.

This pool: workers are ``python -m orchestrator.modules.pool_worker`` processes started
on demand (at most ``size``), reused between calls, and reached through their stdin and
stdout with length-prefixed pickles (waited on by the event loop: no helper threads).
A call whose awaiting task is cancelled kills its worker (SIGKILL, then reaped): the
work stops at once, whatever it was doing. :meth:`ProcessPool.aclose` kills and reaps
them all; nothing outlives it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["BrokenWorker", "ProcessPool"]

T = TypeVar("T")

READY: Final = b"READY\n"
#: A frame: 1 byte status (0 result, 1 exception), 8 bytes length, the pickle.
RESULT_HEADER: Final = struct.Struct(">BQ")
REQUEST_HEADER: Final = struct.Struct(">Q")
#: A worker that does not say READY within this time is broken.
START_TIMEOUT: Final = 60.0


class BrokenWorker(Exception):
    """A worker process died or answered nonsense (its call failed; the pool goes on)."""


class _Worker:
    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> None:
        with anyio.fail_after(START_TIMEOUT):
            if await self._stdout.receive_exactly(len(READY)) != READY:
                raise BrokenWorker("the worker process did not start")
        await self._send(pickle.dumps(list(sys.path)))  # imports as in this process

    async def call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        await self._send(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
        try:
            status, length = RESULT_HEADER.unpack(await self._stdout.receive_exactly(RESULT_HEADER.size))
            value = pickle.loads(await self._stdout.receive_exactly(length))  # noqa: S301 - our own worker
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError) as exc:
            with anyio.move_on_after(1):
                await self.process.wait()  # its output has ended: it is exiting
            raise BrokenWorker(f"worker process {self.pid} died ({_status(self.process.returncode)})") from exc
        if status:
            raise value
        return value  # type: ignore[no-any-return]

    async def _send(self, payload: bytes) -> None:
        try:
            await self._stdin.send(REQUEST_HEADER.pack(len(payload)) + payload)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise BrokenWorker(f"worker process {self.pid} is gone") from exc

    async def kill(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.aclose()  # reaped: no zombie, no ResourceWarning


def _status(code: int | None) -> str:
    if code is None:
        return "still exiting"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class ProcessPool:
    """At most ``size`` worker processes; :meth:`run` calls a picklable function in one."""

    def __init__(self, size: int, *, command: list[str] | None = None) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        self.size = size
        self._command = command or [sys.executable, "-m", "orchestrator.modules.pool_worker"]
        self._limiter = anyio.CapacityLimiter(size)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The pool's live worker processes (for tests and diagnostics)."""
        return sorted(worker.pid for worker in self._workers)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process. Cancelling the caller kills that worker."""
        if self._closed:
            raise RuntimeError("the process pool is closed")
        async with self._limiter:
            worker = self._idle.pop() if self._idle else await self._spawn()
            try:
                result = await worker.call(fn, args)
            except BaseException as exc:
                healthy = isinstance(exc, Exception) and not isinstance(exc, BrokenWorker)
                await self._release(worker, reuse=healthy)  # the function raised: the worker is fine
                raise
            await self._release(worker, reuse=True)
            return result

    async def _release(self, worker: _Worker, *, reuse: bool) -> None:
        if reuse and not self._closed and worker.process.returncode is None:
            self._idle.append(worker)
        else:
            await self._discard(worker)  # cancelled, broken, or the pool is closing

    async def _spawn(self) -> _Worker:
        process = await anyio.open_process(
            self._command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # a crashing interpreter's last words reach our stderr
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        worker = _Worker(process)
        self._workers.add(worker)
        try:
            await worker.start()
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        await worker.kill()

    async def warm(self) -> None:
        """Start the workers now (the first job pays their start-up while it walks)."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.size - len(self._workers)):
                tg.start_soon(self._warm_one)

    async def _warm_one(self) -> None:
        async with self._limiter:
            if len(self._workers) < self.size and not self._closed:
                self._idle.append(await self._spawn())

    async def aclose(self) -> None:
        """Kill and reap every worker; calls still running fail with BrokenWorker."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            for worker in list(self._workers):
                await self._discard(worker)
