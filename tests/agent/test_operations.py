"""Guest operations are named in one module, and each has a handler in the guest."""

from __future__ import annotations

import ast
from pathlib import Path

from pyro_mcp.agent import operations
from pyro_mcp.guest import agent as guest_agent

SRC = Path(operations.__file__).resolve().parents[1]
# ``info`` answers the guest tests only.
NOT_FROM_THE_HOST = {"info"}


def _named_operations(path: Path) -> set[str]:
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("agent", "agent_request")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            named.add(node.args[0].value)
    return named


def test_only_the_operations_module_names_a_guest_operation() -> None:
    elsewhere = {
        str(path.relative_to(SRC)): named
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "operations.py" and (named := _named_operations(path))
    }
    assert elsewhere == {}


def test_every_operation_has_a_guest_handler_and_every_handler_is_used() -> None:
    named = _named_operations(Path(operations.__file__))
    handled = set(guest_agent.OPERATIONS)
    assert named - handled == set()
    assert handled - named == NOT_FROM_THE_HOST
