"""One place for each name: the code takes event names and span attribute keys from
:mod:`otel.vocabulary`, never from string literals scattered through it.

Checked on the source (AST): the event name given to ``logs.event`` and the keys of span
attributes, span-event attributes and link attributes. A few literals outside the
vocabulary's reach are listed in KNOWN with the reason; the list may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "otel")
#: Calls whose dict arguments are span, span-event or link attributes.
_ATTRIBUTE_CALLS = {"Link", "add_event", "add_link", "start_span", "start_as_current_span", "record_exception"}

#: (file, literal) pairs left as they are, and why.
KNOWN: set[tuple[str, str]] = set()


def _literals(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                # logs.event(logger, level, NAME, message, ...)
                if (
                    called == "event"
                    and isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "logs"
                    and len(node.args) >= 3
                    and isinstance(node.args[2], ast.Constant)
                ):
                    found.add((name, str(node.args[2].value)))
                if called == "set_attribute" and node.args and isinstance(node.args[0], ast.Constant):
                    found.add((name, str(node.args[0].value)))
                if called in _ATTRIBUTE_CALLS:
                    for arg in [*node.args, *(k.value for k in node.keywords)]:
                        if isinstance(arg, ast.Dict):
                            found.update((name, str(k.value)) for k in arg.keys if isinstance(k, ast.Constant))
    return found


def test_event_names_and_attribute_keys_come_from_the_vocabulary() -> None:
    assert _literals() - KNOWN == set()


def test_the_known_literals_are_still_there() -> None:
    """Fixed ones leave KNOWN (so the list only shrinks and stays true)."""
    assert KNOWN - _literals() == set()


def test_the_check_sees_each_kind_of_literal(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        'logs.event(log, 20, "made.up.event", "x")\n'
        'span.set_attribute("made_up_key", 1)\n'
        'span.add_event(Event.X, {"event_key": 1})\n'
        'Link(context, {"link_key": "caller"})\n'
        "tracer.start_span(Span.X, attributes={Attr.JOB_ID: 1})\n"
    )
    assert _literals(tmp_path, ("pkg",)) == {
        ("pkg/m.py", "made.up.event"),
        ("pkg/m.py", "made_up_key"),
        ("pkg/m.py", "event_key"),
        ("pkg/m.py", "link_key"),
    }
