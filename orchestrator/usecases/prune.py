"""``PruneUseCase``: retention. Deletes finished jobs older than an age, with everything that
belongs to them (history, webhook deliveries and their attempts), and the embedded
default's rotated telemetry files of the same age.

Safe while workers run: only terminal jobs are deleted (the statement itself checks it,
so a job that a worker still touches is never removed), in batches of short statements.
The active telemetry files are never touched: they are bounded by rotation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.stores import JobStore
from otel import logs
from otel.instrument import instrument
from otel.vocabulary import OperationEvent

__all__ = ["PruneReport", "PruneUseCase"]

log = logging.getLogger(__name__)

#: Jobs deleted per statement: short enough never to hold the store's lock for long.
BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class PruneReport:
    jobs: int
    telemetry_files: int
    telemetry_bytes: int
    dry_run: bool
    #: Finished jobs old enough that are still there afterwards: another session held their
    #: rows (PostgreSQL; a forgotten psql session's ``SELECT ... FOR UPDATE``), or they
    #: finished during the prune (a host whose clock is behind). Prune again later.
    held: int = 0


class PruneUseCase:
    def __init__(self, store: JobStore, *, telemetry_dir: Path | None = None) -> None:
        self._store = store
        self._telemetry_dir = telemetry_dir

    @instrument("usecase.prune", fields=lambda self, *, before_ns, **_: {"before_ns": before_ns})
    async def execute(self, *, before_ns: int, dry_run: bool = False) -> PruneReport:
        """Delete what finished before ``before_ns`` (nanoseconds since the epoch)."""
        jobs = await self._jobs(before_ns, dry_run=dry_run)
        # What matched and is still there: rows another session held (the rounds skip them).
        held = 0 if dry_run else await self._store.count_prunable(before_ns=before_ns)
        files, size = self._telemetry(before_ns / 1e9, dry_run=dry_run)
        report = PruneReport(jobs=jobs, telemetry_files=files, telemetry_bytes=size, dry_run=dry_run, held=held)
        left = f"; {held} left in place (held by another session, or finished meanwhile)" if held else ""
        logs.event(
            log,
            logging.INFO,  # a held row is not an error: the next prune takes it (the CLI says so)
            OperationEvent.PRUNED,
            f"{'would prune' if dry_run else 'pruned'} {jobs} jobs and {files} telemetry files ({size} bytes){left}",
            jobs=jobs,
            telemetry_files=files,
            telemetry_bytes=size,
            dry_run=dry_run,
            held=held or None,
        )
        return report

    async def _jobs(self, before_ns: int, *, dry_run: bool) -> int:
        if dry_run:
            return await self._store.count_prunable(before_ns=before_ns)
        total = 0
        while True:
            deleted = await self._store.prune(before_ns=before_ns, limit=BATCH)
            total += len(deleted)
            if len(deleted) < BATCH:
                return total

    def _telemetry(self, before_s: float, *, dry_run: bool) -> tuple[int, int]:
        """Rotated telemetry files (``traces.jsonl.1`` ...) last written before ``before_s``."""
        if self._telemetry_dir is None or not self._telemetry_dir.is_dir():
            return 0, 0
        files = size = 0
        for path in sorted(self._telemetry_dir.glob("*.jsonl.*")):
            if not path.suffix[1:].isdigit():
                continue  # not a backup the writer rotated (an editor's .orig, a copy): not ours
            try:
                info = path.stat()
                if not path.is_file() or info.st_mtime >= before_s:
                    continue
                if not dry_run:
                    path.unlink()
            except OSError:
                continue  # gone meanwhile, or not ours to delete: retention is best effort here
            files, size = files + 1, size + info.st_size
        return files, size


def before(age_seconds: float, *, now_s: float | None = None) -> int:
    """The cutoff, in nanoseconds, for things older than ``age_seconds``: never before the
    epoch (an age older than that matches nothing, and no database holds such a number)."""
    cutoff = ((now_s if now_s is not None else time.time()) - age_seconds) * 1e9
    return int(cutoff) if cutoff > 0 else 0
