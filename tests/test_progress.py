"""Progress reports are throttled before anyone sees them: the first, one per interval,
each quarter crossed (a milestone), the last; a module may report once per file."""

from __future__ import annotations

import threading

import pytest

from orchestrator.modules.progress import ModuleProgress, ProgressReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_report_per_file_becomes_a_handful_of_updates() -> None:
    clock, seen = FakeClock(), []
    reporter = ProgressReporter("j", "m", seen.append, interval=0.2, clock=clock)
    for done in range(1, 1001):  # 1,000 files, one every 1 ms of (fake) time
        clock.now = done / 1000
        reporter.report(done, 1000)
    reporter.finish()
    # The first, about one per 0.2 s, each quarter crossed, the completion and the final:
    # never one per file.
    dones = [(u.done, u.milestone, u.final) for u in seen]
    assert dones[0] == (1, False, False)
    assert [d for d, milestone, _ in dones if milestone] == [250, 500, 750]
    assert dones[-2:] == [(1000, False, False), (1000, False, True)]
    assert len(seen) <= 12
    assert all(isinstance(u, ModuleProgress) and (u.job_id, u.module) == ("j", "m") for u in seen)


def test_milestones_are_marked_once_even_when_skipped_over() -> None:
    clock, seen = FakeClock(), []
    reporter = ProgressReporter("j", "m", seen.append, interval=10.0, clock=clock)
    reporter.report(0, 4)
    reporter.report(3, 4)  # jumps over 25, 50 and 75 %: one milestone update
    reporter.report(3, 4)
    reporter.report(4, 4)
    assert [(u.done, u.milestone) for u in seen] == [(0, False), (3, True), (4, False)]


def test_unknown_totals_and_bad_counts() -> None:
    seen: list[ModuleProgress] = []
    reporter = ProgressReporter("j", "m", seen.append, interval=0.0)
    reporter.report(5, None)
    assert (seen[-1].done, seen[-1].total, seen[-1].milestone) == (5, None, False)
    with pytest.raises(ValueError, match="never negative"):
        reporter.report(-1, 10)


def test_reports_from_many_threads_are_safe() -> None:
    seen: list[ModuleProgress] = []
    reporter = ProgressReporter("j", "m", seen.append, interval=0.0)
    threads = [threading.Thread(target=lambda: [reporter.report(i, 1000) for i in range(1000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reporter.finish()
    assert seen[-1].final
    assert sum(1 for u in seen if u.milestone) == 3


def test_nothing_is_reported_after_the_final_update() -> None:
    """A module abandoned while still running (it ignored its cancellation) went on
    reporting after its final update, to listeners and to its ended span."""
    seen: list[ModuleProgress] = []
    reporter = ProgressReporter("j", "m", seen.append, interval=0.0)
    reporter.report(3, 10)
    reporter.finish()
    reporter.report(7, 10)
    reporter.report(10, 10)
    assert [(u.done, u.final) for u in seen] == [(3, False), (3, True)]
    assert reporter.latest == (3, 10)
