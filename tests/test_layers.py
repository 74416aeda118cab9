"""The dependency directions, as import-linter contracts (``[tool.importlinter]`` in
pyproject.toml): the tree keeps them, each one can fail, and every package of ours is
placed in a layer."""

from __future__ import annotations

import copy
import functools
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.domain.contract import Contract, ContractCheck

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CONFIG: dict[str, Any] = tomllib.loads(PYPROJECT.read_text("utf-8"))["tool"]["importlinter"]
CONTRACTS: dict[str, dict[str, Any]] = {c["id"]: c for c in CONFIG["contracts"]}
_TYPES: dict[str, type[Contract]] = {"forbidden": ForbiddenContract, "independence": IndependenceContract}

#: The entry points: outermost, imported by nothing of ours.
ENTRY_POINTS = {"orchestrator.api", "orchestrator.cli", "orchestrator.__main__"}


@functools.cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*CONFIG["root_packages"], cache_dir=None)


def _check(contract_id: str, graph: grimp.ImportGraph) -> ContractCheck:
    options = CONTRACTS[contract_id]
    session = {key: value for key, value in CONFIG.items() if key != "contracts"}
    contract = _TYPES[options["type"]](name=options["name"], session_options=session, contract_options=options)
    return contract.check(graph, verbose=False)


def test_the_tree_keeps_every_layer_rule(capsys: pytest.CaptureFixture[str]) -> None:
    status = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == EXIT_STATUS_SUCCESS, report
    assert f"{len(CONTRACTS)} kept, 0 broken" in report


# One import each rule exists to refuse (one of them reaching an adapter indirectly): added to the
# real graph, it must break that rule, which the tree keeps today.
VIOLATIONS = [
    ("domain", "orchestrator.domain.status", "otel.vocabulary"),
    ("domain", "orchestrator.domain.job", "orchestrator.serialization"),
    ("otel", "otel.logs", "orchestrator.domain.status"),
    ("otel", "otel.setup", "orchestrator.telemetry"),
    # events is the one name otel may import: it must import nothing in turn.
    ("events", "orchestrator.domain.events", "orchestrator.domain.status"),
    ("ports", "orchestrator.usecases.create", "orchestrator.stores.sqlite"),
    ("ports", "orchestrator.workflow", "orchestrator.stores.core"),
    ("ports", "orchestrator.usecases.execute", "orchestrator.cli.render"),
    # indirect: a use case reaches an adapter through a module it may import
    ("ports", "orchestrator.settings", "orchestrator.stores.postgres"),
    ("ports", "orchestrator.job_queue.worker", "orchestrator.bootstrap"),
    ("adapters", "orchestrator.stores.core", "orchestrator.workflow"),
    ("adapters", "orchestrator.webhooks.dispatcher", "orchestrator.usecases.create"),
    ("entry-points", "orchestrator.bootstrap", "orchestrator.cli.main"),
    ("entry-points", "orchestrator.serialization", "orchestrator.api.schemas"),
    ("cli-api", "orchestrator.api.schemas", "orchestrator.cli.render"),
    ("cli-api", "orchestrator.cli.commands", "orchestrator.api.app"),
]


@pytest.mark.parametrize(
    ("contract_id", "importer", "imported"), VIOLATIONS, ids=[f"{c}:{a}->{b}" for c, a, b in VIOLATIONS]
)
def test_a_forbidden_import_breaks_its_rule(contract_id: str, importer: str, imported: str) -> None:
    # A check removes the rule's ignored imports from the graph it is given: a copy each.
    assert _check(contract_id, copy.deepcopy(_graph())).kept
    graph = copy.deepcopy(_graph())
    assert {importer, imported} <= graph.modules
    graph.add_import(importer=importer, imported=imported)
    assert not _check(contract_id, graph).kept


def test_the_one_seam_between_cli_and_api_is_serve() -> None:
    """`orchestrator serve` starts the HTTP entry point: the CLI's only import of the API,
    and the API imports nothing of the CLI."""
    graph = _graph()
    into_api = {
        (importer, imported)
        for importer in graph.find_children("orchestrator.cli") | {"orchestrator.cli"}
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("orchestrator.api")
    }
    assert into_api == {("orchestrator.cli.main", "orchestrator.api.server")}
    assert not any(
        imported.startswith("orchestrator.cli")
        for importer in graph.modules
        if importer.startswith("orchestrator.api")
        for imported in graph.find_modules_directly_imported_by(importer)
    )


def test_every_package_of_ours_is_placed_in_a_layer() -> None:
    """A new package must be named by the rules (the entry-points rule lists every
    non-entry-point one), so nothing escapes them by being new."""
    placed = set(CONTRACTS["entry-points"]["source_modules"]) | ENTRY_POINTS
    graph = _graph()
    children = graph.find_children("orchestrator") | {"otel"}
    assert children - placed == set(), "add these to [tool.importlinter] in pyproject.toml"
    assert placed - ENTRY_POINTS <= children, "the rules name a package that no longer exists"
