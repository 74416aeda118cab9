"""The benchmark's analysis modules: ``noop`` (returns at once) and ``work10`` (10 ms of
real CPU work in a worker thread, as a module is told to run CPU-bound work)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from orchestrator.modules.base import BaseModule, ModuleContext
from orchestrator.modules.registry import ModuleRegistry

__all__ = ["CPU_WORK_NS", "NoopModule", "Work10Module", "burn_cpu", "noop_modules", "registry"]

#: Thread CPU time one ``work10`` module burns.
CPU_WORK_NS = 10_000_000
_BLOCK = b"\x5a" * 1024


def burn_cpu(cpu_ns: int = CPU_WORK_NS) -> int:
    """Hash a 1 KiB block in a loop until this thread used ``cpu_ns`` of CPU time;
    returns the rounds done (so the work cannot be optimised away)."""
    deadline = time.thread_time_ns() + cpu_ns
    rounds = 0
    digest = b""
    while time.thread_time_ns() < deadline:
        for _ in range(16):
            digest = hashlib.sha256(_BLOCK + digest).digest()
        rounds += 16
    return rounds


class NoopModule(BaseModule):
    name = "noop"
    expected_runtime = 1.0
    timeout = 30.0
    description = "returns an empty summary at once"

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        return {}


class Work10Module(BaseModule):
    name = "work10"
    expected_runtime = 1.0
    timeout = 30.0
    description = "10 ms of CPU time (hashing) in a worker thread"

    async def run(self, context: ModuleContext) -> dict[str, Any]:
        rounds = await context.run_sync(burn_cpu)
        return {"rounds": rounds}


#: Jobs of several no-op modules need distinct names: noop, noop_2, ..., noop_8.
_MAX_NOOPS = 8


def noop_modules(count: int) -> tuple[str, ...]:
    """The names of ``count`` distinct no-op modules."""
    if not 1 <= count <= _MAX_NOOPS:
        raise ValueError(f"1 to {_MAX_NOOPS} no-op modules")
    return ("noop", *(f"noop_{i}" for i in range(2, count + 1)))


def registry() -> ModuleRegistry:
    """Only the benchmark's modules (no built-ins, no entry points)."""
    noops = [type(f"Noop{i}", (NoopModule,), {"name": f"noop_{i}"})() for i in range(2, _MAX_NOOPS + 1)]
    return ModuleRegistry([NoopModule(), *noops, Work10Module()])
