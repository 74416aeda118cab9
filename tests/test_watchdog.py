"""The exit watchdog: a process asked to stop does stop, whatever a module does (the
real processes are in tests/test_security.py and tests/test_module_shutdown.py)."""

from __future__ import annotations

import threading

import pytest

from orchestrator.job_queue.watchdog import ExitWatchdog


def test_it_says_why_flushes_telemetry_and_exits_when_it_fires(capsys: pytest.CaptureFixture[str]) -> None:
    exited: list[int] = []
    flushed: list[float] = []
    done = threading.Event()

    def fake_exit(code: int) -> None:
        exited.append(code)
        done.set()

    watchdog = ExitWatchdog(0.01, flush=flushed.append, exit=fake_exit)
    watchdog.arm()
    assert done.wait(10)
    assert (exited, flushed) == ([0], [2.0])
    assert "still running 0.01 s after the stop was asked" in capsys.readouterr().err


def test_it_exits_even_when_the_flush_fails() -> None:
    exited: list[int] = []
    done = threading.Event()

    def broken_flush(timeout: float) -> None:
        raise RuntimeError("collector gone")

    def fake_exit(code: int) -> None:
        exited.append(code)
        done.set()

    ExitWatchdog(0.01, flush=broken_flush, exit=fake_exit, exit_code=3).arm()
    assert done.wait(10)
    assert exited == [3]


def test_disarmed_it_never_fires() -> None:
    exited: list[int] = []
    watchdog = ExitWatchdog(0.05, exit=exited.append)
    watchdog.arm()
    timer = watchdog._timer
    watchdog.disarm()
    assert timer is not None
    timer.join(10)
    assert not watchdog.fired.is_set()
    assert exited == []
