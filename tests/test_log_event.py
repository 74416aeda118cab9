"""``otel.logs.event`` builds its record for the caller, as ``logger.log(...,
stacklevel=2)`` would (file, line, function, exception info), without logging's own walk
up the stack."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from otel import logs


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, Keep]]:
    logger = logging.getLogger("orchestrator.test_log_event")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def a_caller(logger: logging.Logger) -> int:
    line = sys._getframe().f_lineno + 1
    logs.event(logger, logging.INFO, "job.lifecycle.start", "started %s", job_id="j", attempt=1, gone=None)
    return line


def test_the_record_names_the_caller_and_carries_the_event_and_fields(kept: tuple[logging.Logger, Keep]) -> None:
    logger, handler = kept
    line = a_caller(logger)
    (record,) = handler.records
    assert (record.pathname, record.lineno, record.funcName) == (__file__, line, "a_caller")
    assert (record.name, record.levelno, record.module) == (
        "orchestrator.test_log_event",
        logging.INFO,
        "test_log_event",
    )
    assert record.getMessage() == "started %s"  # never %-formatted with the fields
    assert getattr(record, logs.EVENT_KEY) == "job.lifecycle.start"
    assert logs.record_fields(record) == {"job_id": "j", "attempt": 1}
    assert record.exc_info is None


def test_the_same_record_as_logger_log_with_stacklevel_two(kept: tuple[logging.Logger, Keep]) -> None:
    logger, handler = kept

    def via_event() -> None:
        logs.event(logger, logging.WARNING, "e", "m")

    def via_log() -> None:
        logger.log(logging.WARNING, "m", stacklevel=1)

    via_event()
    via_log()
    ours, theirs = handler.records
    assert (ours.pathname, ours.funcName, ours.lineno) == (__file__, "via_event", theirs.lineno - 3)
    assert (theirs.pathname, theirs.funcName) == (__file__, "via_log")
    assert (ours.levelname, ours.process, ours.thread, ours.module) == (
        theirs.levelname,
        theirs.process,
        theirs.thread,
        theirs.module,
    )


def test_exception_info_from_an_exception_or_the_one_being_handled(kept: tuple[logging.Logger, Keep]) -> None:
    logger, handler = kept
    error = ValueError("bad")
    logs.event(logger, logging.ERROR, "e", "given", exc_info=error)
    try:
        raise KeyError("handled")
    except KeyError:
        logs.event(logger, logging.ERROR, "e", "current", exc_info=True)
    logs.event(logger, logging.ERROR, "e", "none", exc_info=False)
    given, current, none = handler.records
    assert given.exc_info == (ValueError, error, None)
    assert current.exc_info is not None
    assert current.exc_info[0] is KeyError
    assert none.exc_info is None


def test_a_disabled_level_builds_nothing_and_caller_lookup_can_be_turned_off(
    kept: tuple[logging.Logger, Keep], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, handler = kept
    logger.setLevel(logging.WARNING)
    logs.event(logger, logging.INFO, "e", "dropped")
    assert handler.records == []
    monkeypatch.setattr(logging, "_srcfile", None)
    logs.event(logger, logging.WARNING, "e", "kept")
    (record,) = handler.records
    assert (record.pathname, record.lineno, record.funcName) == ("(unknown file)", 0, "(unknown function)")


def test_an_exception_no_thread_handled_is_one_structured_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread a module started that raises: the default hook wrote a raw traceback into
    the JSON log (no event, no fields); now one ERROR record naming the thread."""
    import io
    import json
    import threading

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # put back afterwards
    stream = io.StringIO()
    handler = logs.configure_logging(fmt="json", stream=stream)
    logs.log_thread_exceptions()
    root = logging.getLogger()

    def fails() -> None:
        raise ValueError("the module's own thread failed")

    def exits() -> None:
        raise SystemExit(3)

    try:
        for target, name in ((fails, "module-helper"), (exits, "leaving")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            thread.join()
    finally:
        root.removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["event"], r["message"]) for r in records] == [
        ("error", "operation.error", "unhandled ValueError in thread 'module-helper'")
    ]
    [record] = records
    assert (record["thread"], record["error_type"], record["operation"]) == ("module-helper", "ValueError", "thread")
    assert "in fails" in record["exception"]
    assert record["exception"].rstrip().endswith("ValueError: the module's own thread failed")
