"""Supervisor control operations are named in one module, and the supervisor
answers each of them and no other."""

from __future__ import annotations

import ast
from pathlib import Path

from pyro_mcp.vm import control_ops
from pyro_mcp.vm.supervisor import Supervisor

SRC = Path(control_ops.__file__).resolve().parents[1]


def _handled() -> set[str]:
    # The table is made of closures: building it runs none of them.
    return set(vars(Supervisor)["_control"].func(object.__new__(Supervisor)))


def _named(path: Path, names: set[str]) -> set[str]:
    """Operations in ``names`` that ``path`` passes, as a literal, to some ``.call``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "call"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in names
        ):
            found.add(str(node.args[0].value))
    return found


def test_only_the_control_ops_module_names_a_supervisor_operation() -> None:
    handled = _handled()
    elsewhere = {
        str(path.relative_to(SRC)): named
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "control_ops.py" and (named := _named(path, handled))
    }
    assert elsewhere == {}


def test_the_supervisor_answers_every_operation_and_only_those() -> None:
    handled = _handled()
    assert _named(Path(control_ops.__file__), handled | {"?"}) == handled
    assert "agent" not in handled  # relayed to the guest: agent/operations.py
