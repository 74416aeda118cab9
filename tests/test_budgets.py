"""Budgets that fit the project: module timeouts and expected runtimes from the module,
the settings and the job, scaled by the size of the tree; per-job options validated at
the edge (a 422 naming the field)."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pydantic
import pytest
from api_helpers import api_client, fast_settings

from orchestrator.api.app import create_api
from orchestrator.bootstrap import App, open_app
from orchestrator.domain import InvalidRequest, JobOptions, ModuleOutcome
from orchestrator.domain.job import ModuleBudget
from orchestrator.modules import job_files, job_run
from orchestrator.modules.base import BaseModule, ModuleContext, ModuleSummary
from orchestrator.modules.budget import Budget, BudgetPolicy, JobBudgets, parse_module_seconds
from orchestrator.modules.index import FileIndex, IndexConfig, WalkStats, build_index
from orchestrator.modules.job_files import JobFiles
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.usecases import JobControl

pytestmark = pytest.mark.anyio


class Declared(BaseModule):
    name: ClassVar[str] = "declared"
    expected_runtime: ClassVar[float] = 2.0
    timeout: ClassVar[float] = 20.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        index = await context.index()  # the tree is walked (and the budget scaled) before it ends
        assert context.budget is not None
        return {"files": len(index)}


class Quick(BaseModule):
    """Returns at once, never looking at the files."""

    name: ClassVar[str] = "quick"
    expected_runtime: ClassVar[float] = 2.0
    timeout: ClassVar[float] = 20.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        assert context.job_files is not None
        return {"walked": context.job_files.walked is not None}


class Patient(BaseModule):
    """Never asks for the index, but runs until the job's walk (started for the budgets
    alone) has finished."""

    name: ClassVar[str] = "patient"
    expected_runtime: ClassVar[float] = 2.0
    timeout: ClassVar[float] = 20.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        assert context.job_files is not None
        with anyio.fail_after(10):
            while context.job_files.walked is None:
                await anyio.sleep(0.001)
        return {"files": len(context.job_files.walked)}


class Waits(BaseModule):
    """Runs until its timeout stops it."""

    name: ClassVar[str] = "waits"
    expected_runtime: ClassVar[float] = 1.0
    timeout: ClassVar[float] = 600.0

    async def run(self, context: ModuleContext) -> ModuleSummary:
        await anyio.Event().wait()
        return {}


# --- the numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("secrets=120", {"secrets": 120.0}),
        (" secrets = 1.5 , inventory=300,*=600 ", {"secrets": 1.5, "inventory": 300.0, "*": 600.0}),
        ("", {}),
        ("a-b_c=0.25,", {"a-b_c": 0.25}),
    ],
)
def test_module_seconds_are_read_from_a_setting(text: str, parsed: dict[str, float]) -> None:
    assert parse_module_seconds(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("secrets", "'secrets' is not module=seconds"),
        ("secrets=soon", "'soon' is not a number of seconds"),
        ("secrets=0", "seconds must be above 0"),
        ("secrets=-5", "seconds must be above 0"),
        ("secrets=nan", "seconds must be above 0"),
        ("secrets=inf", "seconds must be above 0"),
        ("secrets=700000", "at most 604800"),
        ("bad name=5", "'bad name=5' is not module=seconds"),
    ],
)
def test_bad_module_seconds_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_module_seconds(text)


def test_settings_take_budgets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_MODULE_TIMEOUTS", "secrets=120,*=600")
    monkeypatch.setenv("ORCHESTRATOR_MODULE_EXPECTED", "inventory=4")
    monkeypatch.setenv("ORCHESTRATOR_BUDGET_REFERENCE_FILES", "5000")
    settings = Settings()
    assert settings.module_timeouts == {"secrets": 120.0, "*": 600.0}
    assert settings.module_expected == {"inventory": 4.0}
    assert settings.budget_reference_files == 5000
    monkeypatch.setenv("ORCHESTRATOR_MODULE_EXPECTED", "inventory=never")
    with pytest.raises(pydantic.ValidationError, match="module_expected"):
        Settings()


class Stub:
    def __init__(self, name: str, expected: float, timeout: float) -> None:
        self.name, self.expected_runtime, self.timeout = name, expected, timeout


def test_the_job_wins_then_the_settings_then_the_module() -> None:
    policy = BudgetPolicy(timeouts={"a": 100.0, "*": 50.0}, expected={"b": 3.0})
    a, b = Stub("a", 1.0, 10.0), Stub("b", 2.0, 20.0)
    assert policy.base(a) == Budget(100.0, 1.0)
    assert policy.base(b) == Budget(50.0, 3.0)
    job = ModuleBudget(timeout_s=7.0)
    assert policy.base(a, job) == Budget(7.0, 1.0, timeout_scales=False, expected_scales=True)
    job = ModuleBudget(expected_s=0.5)
    assert policy.base(b, job) == Budget(50.0, 0.5, timeout_scales=True, expected_scales=False)


@pytest.mark.parametrize(
    ("files", "total_bytes", "scale"),
    [
        (0, 0, 1.0),
        (999, 24_000_000, 1.0),
        (2_000, 1_000, 2.0),  # by files
        (10, 100_000_000, 4.0),  # by bytes
        (10_790, 249_000_000, 10.79),  # the site-packages: its files weigh more
        (121_000, 3_000_000_000, 121.0),
    ],
)
def test_budgets_scale_with_the_larger_of_files_and_bytes(files: int, total_bytes: int, scale: float) -> None:
    assert math.isclose(BudgetPolicy().scale(files, total_bytes), scale)
    assert BudgetPolicy(reference_files=0, reference_bytes=0).scale(files, total_bytes) == 1.0


async def test_deadlines_move_to_the_scaled_timeout_once_the_tree_is_walked() -> None:
    budgets = JobBudgets(BudgetPolicy(timeouts={"*": 10.0}), {"fixed": ModuleBudget(timeout_s=3.0)})
    with anyio.CancelScope() as scaled_scope, anyio.CancelScope() as fixed_scope:
        started = anyio.current_time()
        assert budgets.start(Stub("scaled", 1.0, 99.0), scaled_scope) == Budget(10.0, 1.0)
        budgets.start(Stub("fixed", 1.0, 99.0), fixed_scope)
        assert started <= scaled_scope.deadline - 10.0 <= anyio.current_time()
        budgets.sized(files=5_000, total_bytes=0)  # five reference projects
        assert budgets.scale == 5.0
        assert started <= scaled_scope.deadline - 50.0 <= anyio.current_time()
        assert started <= fixed_scope.deadline - 3.0 <= anyio.current_time()  # the job's own: as given
        final = budgets.finish(Stub("scaled", 1.0, 99.0))
        assert final == Budget(50.0, 5.0, timeout_scales=False, expected_scales=False)


async def test_while_the_walk_runs_deadlines_follow_the_files_found_so_far() -> None:
    """A huge tree is not cut off by the unscaled timeout before it is sized: the files
    found so far already earn their share, and a deadline never moves earlier."""
    budgets = JobBudgets(BudgetPolicy(timeouts={"*": 10.0}, reference_files=1_000, reference_bytes=0))
    with anyio.CancelScope() as early, anyio.CancelScope() as late:
        started = anyio.current_time()
        budgets.start(Stub("early", 1.0, 99.0), early)
        budgets.growing(files=3_000, total_bytes=0)  # three reference projects found so far
        assert started <= early.deadline - 30.0 <= anyio.current_time()
        budgets.growing(files=2_000, total_bytes=0)  # a smaller count never lowers it
        assert started <= early.deadline - 30.0 <= anyio.current_time()
        assert budgets.scale is None  # not sized yet: expected runtimes wait for the index
        later = anyio.current_time()
        budgets.start(Stub("late", 1.0, 99.0), late)  # starting now: what is found so far counts
        assert later <= late.deadline - 30.0 <= anyio.current_time()
        budgets.sized(files=8_000, total_bytes=0)
        assert started <= early.deadline - 80.0 <= anyio.current_time()
        budgets.growing(files=9_999_999, total_bytes=0)  # once sized, the walk's count is done
        assert started <= early.deadline - 80.0 <= anyio.current_time()


async def test_job_files_report_the_files_a_running_walk_has_found(tmp_path: Path) -> None:
    """The walk is held at a gate once it has found 40 of 60 files: the count is reported
    while it waits, then the index holds every file."""
    root = tree(tmp_path / "src", 0)
    for index in range(60):
        sub = root / f"d{index // 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{index}.txt").write_text("x\n")
    reached, release = threading.Event(), threading.Event()

    def gated_walk(source: Path, config: IndexConfig, *, cancelled: Any, stats: WalkStats, **kw: Any) -> FileIndex:
        def gate() -> bool:
            if stats.files_seen >= 40 and not release.is_set():
                reached.set()
                release.wait(30)
            return bool(cancelled())

        return build_index(source, config, cancelled=gate, stats=stats, **kw)

    seen: list[int] = []
    counted = anyio.Event()

    def report(files: int) -> None:
        seen.append(files)
        if files >= 40:
            counted.set()

    async with JobFiles(root, walk=gated_walk, walk_report_seconds=0.01) as files:
        files.when_walking(report)
        files.start_walk()
        with anyio.fail_after(30):
            await counted.wait()
        assert files.walked is None  # still walking, held at the gate
        release.set()
        with anyio.fail_after(30):
            index = await files.index()
    assert reached.is_set()
    assert len(index) == 60
    assert 40 <= max(seen) <= 60
    assert seen == sorted(seen)


# --- in jobs ----------------------------------------------------------------------------------


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        module_expected={"declared": 0.5},
        budget_reference_files=10,
        budget_reference_bytes=0,
    )
    async with open_app(settings, registry=ModuleRegistry([Declared(), Waits(), Quick(), Patient()])) as opened:
        yield opened


def tree(root: Path, files: int) -> Path:
    for index in range(files):
        path = root / f"f{index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    return root


async def run(app: App, source: Path, modules: list[str], **options: Any) -> Any:
    await app.create.execute({"project_id": "p", "source": str(source), "modules": modules, "options": options})
    running = await app.workflow.claim("w1", lease_seconds=60)
    assert running is not None
    return await app.execute.execute(running, control=JobControl(), worker_id="w1")


async def test_a_larger_tree_gets_a_larger_budget(tmp_path: Path, app: App) -> None:
    small = await run(app, tree(tmp_path / "small", 5), ["declared"])
    large = await run(app, tree(tmp_path / "large", 30), ["declared"])
    assert [(r.expected_ms, r.timeout_ms) for r in small.results] == [(500.0, 20_000.0)]  # under the reference
    assert [(r.expected_ms, r.timeout_ms) for r in large.results] == [(1_500.0, 60_000.0)]  # 30 / 10 = 3x


async def test_a_module_that_never_asks_for_the_index_still_runs_under_a_sized_budget(
    tmp_path: Path, app: App
) -> None:
    final = await run(app, tree(tmp_path / "large", 30), ["patient"])
    [result] = final.results
    assert result.outcome is ModuleOutcome.OK
    assert result.summary == {"files": 30}
    assert (result.expected_ms, result.timeout_ms) == (6_000.0, 60_000.0)  # 30 / 10 = 3x


async def test_a_job_whose_modules_end_before_the_walk_delay_is_not_walked(
    tmp_path: Path, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The delay made long, so that "before it" holds on a loaded machine too.)
    monkeypatch.setattr(job_run, "WALK_DELAY_SECONDS", 3600.0)
    started: list[Path] = []

    in_thread = job_files.run_in_daemon_thread

    async def recording(fn: Any, root: Path, *args: Any, **kwargs: Any) -> Any:
        started.append(root)
        return await in_thread(fn, root, *args, **kwargs)

    monkeypatch.setattr(job_files, "run_in_daemon_thread", recording)
    final = await run(app, tree(tmp_path / "large", 30), ["quick"])
    [result] = final.results
    assert (result.outcome, result.summary) == (ModuleOutcome.OK, {"walked": False})
    # Judged by the unscaled numbers: sizing could only have raised them.
    assert (result.expected_ms, result.timeout_ms) == (2_000.0, 20_000.0)
    assert started == []
    # A module that asks for the index starts the walk at once, delay or not.
    asked = await run(app, tree(tmp_path / "asked", 30), ["declared"])
    [declared] = asked.results
    assert (declared.outcome, declared.summary, declared.expected_ms) == (ModuleOutcome.OK, {"files": 30}, 1_500.0)
    assert started == [(tmp_path / "asked").resolve()]


async def test_a_jobs_own_numbers_are_used_as_given(tmp_path: Path, app: App) -> None:
    budgets = {"declared": {"expected_s": 0.25, "timeout_s": 9}, "waits": {"timeout_s": 0.3}}
    final = await run(app, tree(tmp_path / "large", 30), ["declared", "waits"], module_budgets=budgets)
    results = {r.module: r for r in final.results}
    assert (results["declared"].expected_ms, results["declared"].timeout_ms) == (250.0, 9_000.0)
    assert results["waits"].outcome is ModuleOutcome.TIMEOUT
    assert results["waits"].error == "exceeded its 0.3 s timeout"
    assert final.options.module_budgets["waits"] == ModuleBudget(timeout_s=0.3)


# --- per-job options at the edge --------------------------------------------------------------

BAD_OPTIONS = [
    pytest.param({"module_budgets": {"other": {"timeout_s": 5}}}, "options.module_budgets", id="foreign-module"),
    pytest.param(
        {"module_budgets": {"declared": {"timeout_s": 0}}},
        "options.module_budgets.declared.timeout_s",
        id="zero-timeout",
    ),
    pytest.param(
        {"module_budgets": {"declared": {"timeout_s": "NaN"}}},
        "options.module_budgets.declared.timeout_s",
        id="nan-timeout",
    ),
    pytest.param(
        {"module_budgets": {"declared": {"expected_s": -1}}},
        "options.module_budgets.declared.expected_s",
        id="negative-expected",
    ),
    pytest.param(
        {"module_budgets": {"declared": {"timeout_s": 5, "expected_s": 10}}},
        "options.module_budgets.declared.expected_s",
        id="expected-over-timeout",
    ),
    pytest.param(
        {"module_budgets": {"declared": {"timeout": 5}}}, "options.module_budgets.declared.timeout", id="unknown-key"
    ),
    pytest.param({"ignore": ["!"]}, "options.ignore", id="invalid-pattern"),
    pytest.param({"ignore": [""]}, "options.ignore.0", id="empty-pattern"),
    pytest.param({"gitignore": "sometimes"}, "options.gitignore", id="not-a-boolean"),
]


@pytest.mark.parametrize(("options", "field"), BAD_OPTIONS)
async def test_bad_per_job_options_are_a_422_naming_the_field(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    settings = fast_settings(tmp_path)
    (tmp_path / "project").mkdir()
    async with open_app(settings, registry=ModuleRegistry([Declared()])) as app:
        body = {"project_id": "acme", "source": str(tmp_path / "project"), "options": options}
        async with api_client(create_api(app)) as client:
            response = await client.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
        assert response.json()["error"]["code"] == "validation_error"
        with pytest.raises(InvalidRequest) as refused:
            await app.create.execute(body)
        assert refused.value.field == field


async def test_per_job_options_round_trip_through_the_store(tmp_path: Path, app: App) -> None:
    options = {
        "module_budgets": {"declared": {"timeout_s": 30, "expected_s": 2}},
        "ignore": ["*.log", "!keep.log"],
        "default_ignores": False,
        "gitignore": False,
    }
    created = await app.create.execute(
        {"project_id": "p", "source": str(tree(tmp_path / "t", 1)), "modules": ["declared"], "options": options}
    )
    stored = await app.store.get(created.id)
    assert stored.options == JobOptions(
        module_budgets={"declared": ModuleBudget(timeout_s=30.0, expected_s=2.0)},
        ignore=("*.log", "!keep.log"),
        default_ignores=False,
        gitignore=False,
    )
    assert JobOptions.from_json(stored.options.to_json()) == stored.options


async def test_a_module_sharing_the_pass_is_expected_to_last_as_long_as_the_pass() -> None:
    budgets = JobBudgets(BudgetPolicy())
    syntax, secrets, alone = Stub("syntax", 1.0, 60.0), Stub("secrets", 0.5, 60.0), Stub("alone", 0.2, 60.0)
    with anyio.CancelScope() as a, anyio.CancelScope() as b, anyio.CancelScope() as c:
        for module, scope in ((syntax, a), (secrets, b), (alone, c)):
            budgets.start(module, scope)
        budgets.sized(files=3_000, total_bytes=0)
        shared = {"syntax", "secrets"}
        assert budgets.finish(secrets, shared_with=shared).expected_s == 3.0  # python_syntax's, scaled
        assert budgets.finish(secrets, shared_with=shared).timeout_s == 180.0  # its own
        assert budgets.finish(syntax, shared_with=shared).expected_s == 3.0
        assert math.isclose(budgets.finish(alone).expected_s, 0.6)


async def test_in_a_whole_job_the_scanning_modules_share_an_expected_runtime(tmp_path: Path) -> None:
    from orchestrator.modules.builtin import PythonSyntaxModule, SecretsModule, TodosModule

    registry = ModuleRegistry([PythonSyntaxModule(), SecretsModule(), TodosModule(), Declared()])
    async with open_app(Settings(data_dir=tmp_path / "data"), registry=registry) as app:
        final = await run(app, tree(tmp_path / "t", 3), ["python_syntax", "secrets", "todos", "declared"])
    expected = {r.module: r.expected_ms for r in final.results}
    assert expected == {"python_syntax": 1000.0, "secrets": 1000.0, "todos": 1000.0, "declared": 2000.0}
