"""The domain's small pieces, against literal expectations: typed errors carry their job,
target and message; stored text escapes exactly NUL and lone surrogates; stored results
and options read back with their documented defaults; a job's log fields."""

from __future__ import annotations

import time
import uuid

import pytest

from orchestrator.domain import (
    CancelPending,
    ErrorCategory,
    FailurePolicy,
    IllegalTransition,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    LifecycleEntry,
    ModuleOutcome,
    ModuleResult,
    OrchestratorError,
    PersistenceError,
    Phase,
    TraceContext,
    TransitionConflict,
)
from orchestrator.domain.errors import new_error_id
from orchestrator.domain.events import LifecycleEvent
from orchestrator.domain.job import ModuleBudget, first_id_at, new_job_id
from orchestrator.domain.values import canonical_text, storable

# -- errors -----------------------------------------------------------------------------


def test_job_not_found_names_the_job() -> None:
    error = JobNotFound("j-404")
    assert (error.job_id, error.message, error.category) == ("j-404", "no job with id 'j-404'", "validation")
    assert error.context() == {"error_category": "validation", "error": "no job with id 'j-404'", "job_id": "j-404"}


def test_a_pending_cancel_is_a_conflict_from_running_naming_the_target_and_the_reason() -> None:
    error = CancelPending("j-1", JobStatus.COMPLETED, "stop, please", project_id="p-1")
    assert isinstance(error, TransitionConflict)
    assert isinstance(error, IllegalTransition)
    assert (error.job_id, error.project_id, error.reason) == ("j-1", "p-1", "stop, please")
    assert (error.current, error.expected, error.target) == (JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.COMPLETED)
    message = "job j-1 cannot go to completed: its cancellation was requested (stop, please)"
    assert (error.message, str(error)) == (message, message)
    assert error.context()["error_category"] == str(ErrorCategory.TRANSITION)


def test_a_persistence_error_keeps_its_id_transience_and_context() -> None:
    error = PersistenceError("the store failed", error_id="abcd1234", transient=True, job_id="j-2", project_id="p")
    assert (error.error_id, error.transient, error.job_id, error.project_id) == ("abcd1234", True, "j-2", "p")
    assert PersistenceError().transient is False
    assert PersistenceError().message == "The job store could not be read or written."


def test_an_error_id_is_eight_hex_digits() -> None:
    ids = {new_error_id() for _ in range(50)}
    assert all(len(i) == 8 and int(i, 16) >= 0 for i in ids)
    assert len(ids) > 1


# -- stored text ------------------------------------------------------------------------

CANONICAL = [
    ("plain", "plain"),
    ("a\x00b", "a\\x00b"),
    ("\x01", "\x01"),  # a control character other than NUL is stored as it is
    ("\udc80", "\\x80"),  # an undecodable byte (surrogateescape) is written as that byte
    ("\udcff", "\\xff"),
    ("\udc7f", "\\udc7f"),  # a lone surrogate outside that range is written as a code point
    ("\ud800", "\\ud800"),
    ("\udd00", "\\udd00"),
    ("caf\xe9 \U0001f680", "caf\xe9 \U0001f680"),
]


@pytest.mark.parametrize(("raw", "stored"), CANONICAL, ids=[repr(r) for r, _ in CANONICAL])
def test_stored_text_escapes_exactly_nul_and_lone_surrogates(raw: str, stored: str) -> None:
    assert canonical_text(raw) == stored
    assert storable(stored)
    assert storable(raw) is (raw == stored)


# -- stored results and options ---------------------------------------------------------


def test_a_stored_result_without_an_attempt_is_the_first_attempt() -> None:
    data = {
        "module": "todos",
        "version": "1.1.0",
        "outcome": "ok",
        "started_ns": 1,
        "duration_ms": 2.0,
        "expected_ms": 3.0,
        "timeout_ms": 4.0,
    }
    result = ModuleResult.from_json(data)
    assert (result.attempt, result.summary, result.error, result.error_type) == (1, {}, None, None)
    assert result.outcome is ModuleOutcome.OK
    assert ModuleResult.from_json({**data, "attempt": 3}).attempt == 3


def test_options_with_module_budgets_round_trip() -> None:
    options = JobOptions(module_budgets={"todos": ModuleBudget(timeout_s=9.5, expected_s=1.5), "x": ModuleBudget()})
    stored = options.to_json()
    assert stored["module_budgets"] == {
        "todos": {"timeout_s": 9.5, "expected_s": 1.5},
        "x": {"timeout_s": None, "expected_s": None},
    }
    assert JobOptions.from_json(stored) == options
    assert JobOptions.from_json({"module_budgets": {"m": {"timeout_s": 2}}}).module_budgets == {
        "m": ModuleBudget(timeout_s=2, expected_s=None)
    }


def test_a_jobs_log_fields_are_its_id_and_project() -> None:
    job = Job.new(project_id="p-9", source="/src", modules=("todos",), options=JobOptions(), trace=TraceContext.new())
    assert job.log_fields() == {"job_id": job.id, "project_id": "p-9"}


def test_an_errors_context_has_every_field_it_was_given() -> None:
    error = OrchestratorError("it broke", job_id="j", project_id="p", module="todos", phase=Phase.EXECUTE)
    assert (error.module, error.phase) == ("todos", Phase.EXECUTE)
    assert error.context() == {
        "error_category": "internal",
        "error": "it broke",
        "job_id": "j",
        "project_id": "p",
        "module": "todos",
        "phase": "execute",
    }
    assert OrchestratorError().context() == {"error_category": "internal", "error": "The orchestrator failed."}


def test_an_error_class_without_a_docstring_is_named_by_its_class() -> None:
    class Undocumented(OrchestratorError):
        pass

    Undocumented.__doc__ = None
    assert Undocumented().message == "Undocumented"


def test_a_result_as_stored_names_every_field() -> None:
    result = ModuleResult(
        module="m",
        version="1",
        outcome=ModuleOutcome.OK,
        started_ns=5,
        duration_ms=30.0,
        expected_ms=20.0,
        timeout_ms=60.0,
        attempt=2,
        summary={"n": 1},
    )
    assert result.to_json() == {
        "module": "m",
        "version": "1",
        "outcome": "ok",
        "started_ns": 5,
        "duration_ms": 30.0,
        "expected_ms": 20.0,
        "timeout_ms": 60.0,
        "attempt": 2,
        "overran": True,
        "summary": {"n": 1},
        "error": None,
        "error_type": None,
    }


def test_options_read_back_with_their_defaults_and_every_field() -> None:
    assert JobOptions.from_json({}) == JobOptions()
    options = JobOptions(
        failure_policy=FailurePolicy.FAIL_FAST,
        concurrency=3,
        module_options={"todos": {"x": 1}},
        module_budgets={"todos": ModuleBudget(timeout_s=5.0)},
        ignore=("*.log", "!keep.log"),
        default_ignores=False,
        gitignore=True,
    )
    stored = options.to_json()
    assert stored == {
        "failure_policy": "fail_fast",
        "concurrency": 3,
        "module_options": {"todos": {"x": 1}},
        "module_budgets": {"todos": {"timeout_s": 5.0, "expected_s": None}},
        "ignore": ["*.log", "!keep.log"],
        "default_ignores": False,
        "gitignore": True,
    }
    assert JobOptions.from_json(stored) == options


@pytest.mark.parametrize(
    ("status_from", "status_to", "event"),
    [
        (None, JobStatus.PENDING, "job.lifecycle.create"),
        (JobStatus.PENDING, JobStatus.QUEUED, "job.lifecycle.enqueue"),
        (JobStatus.RUNNING, JobStatus.QUEUED, "job.lifecycle.recover"),
        (JobStatus.RUNNING, JobStatus.RUNNING, "job.lifecycle.cancel_requested"),
    ],
)
def test_a_history_entry_without_an_event_gets_its_transitions(
    status_from: JobStatus | None, status_to: JobStatus, event: str
) -> None:
    entry = LifecycleEntry("j", 1, status_from, status_to, "why", 10, 1.0, 1)
    assert str(entry.event) == event
    given = LifecycleEntry("j", 1, status_from, status_to, "why", 10, 1.0, 1, event=LifecycleEvent.FAIL)
    assert given.event is LifecycleEvent.FAIL


def test_a_job_id_is_a_version_7_uuid_of_its_creation_millisecond() -> None:
    created_ns = 1_764_000_000_123_456_789
    ids = [new_job_id(created_ns) for _ in range(200)]
    values = [uuid.UUID(i) for i in ids]
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)
    assert {v.int >> 80 for v in values} == {1_764_000_000_123}  # the leading 48 bits: Unix ms
    assert len(set(ids)) == 200
    assert all(str(v) == i for v, i in zip(values, ids, strict=True))
    before = time.time_ns()
    job = Job.new(project_id="p", source="/s", modules=("a",), options=JobOptions(), trace=TraceContext.new())
    assert before // 1_000_000 <= uuid.UUID(job.id).int >> 80 == job.created_ns // 1_000_000


@pytest.mark.parametrize(
    ("created_ns", "since_ns"),
    [
        (1_764_000_000_123_456_789, 1_764_000_000_123_456_789),  # the same nanosecond
        (1_764_000_000_123_999_999, 1_764_000_000_123_000_000),  # the same millisecond
        (1_764_000_000_124_000_000, 1_764_000_000_123_999_999),  # the next millisecond
        (1_764_000_100_000_000_000, 1_764_000_000_000_000_000),  # much later
        (5, 0),
        ((1 << 48) * 1_000_000 + 7, (1 << 48) * 1_000_000),  # past uuid7's clock: clamped
    ],
)
def test_the_first_id_of_a_moment_is_below_every_id_created_from_it(created_ns: int, since_ns: int) -> None:
    bound = first_id_at(since_ns)
    assert all(new_job_id(created_ns) >= bound for _ in range(50))
    # And tight: the ids of the millisecond before are below it.
    if 1_000_000 <= since_ns < (1 << 48) * 1_000_000:
        assert all(new_job_id(since_ns - 1_000_000) < bound for _ in range(50))
    assert first_id_at(-(10**18)) == "00000000-0000" <= new_job_id(0)


def test_new_trace_contexts_draw_every_bit_of_both_ids() -> None:
    drawn = [TraceContext.new() for _ in range(1_000)]
    assert all(len(c.trace_id) == 32 and len(c.span_id) == 16 for c in drawn)
    assert len({c.trace_id for c in drawn}) == len({c.span_id for c in drawn}) == 1_000
    trace_ids, span_ids = [int(c.trace_id, 16) for c in drawn], [int(c.span_id, 16) for c in drawn]
    # Each bit is 0 in some ids and 1 in others (a fixed bit: one chance in 2**999).
    for ids, bits in ((trace_ids, 128), (span_ids, 64)):
        ones = [sum(i >> b & 1 for i in ids) for b in range(bits)]
        assert all(0 < count < 1_000 for count in ones), ones
    assert all(t & 0xFFFF_FFFF_FFFF_FFFF != s and t >> 64 != s for t, s in zip(trace_ids, span_ids, strict=True))
