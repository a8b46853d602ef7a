"""Errors as a model reads them: tool names instead of CLI commands, one line per bad argument.

The service layer's messages name CLI commands (`pyro workspace list`) because
people read them in a terminal. A model in a chat cannot run those; it can call
tools. At the MCP boundary, a command with a tool of its own becomes that tool,
and one only the user can run (building, preparing, checking the host) is
addressed to the user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# CLI command (first words) -> the tool that does the same.
_TOOLS = {
    "workspace list": "workspace_list",
    "workspace start": "workspace_start",
    "workspace stop": "workspace_stop",
    "workspace status": "workspace_status",
    "workspace reset": "workspace_reset",
    "workspace delete": "workspace_delete",
    "workspace snapshot list": "snapshot_list",
    "workspace service list": "service_list",
    "workspace shell open": "shell_open",
    "vm list": "vm_list",
    "vm start": "vm_start",
    "vm delete": "vm_delete",
    "env list": "vm_list_environments",
}
_COMMAND = re.compile(r"`pyro ([^`]*)`")


def for_model(message: str) -> str:
    """``message`` with each `pyro ...` command turned into a tool, or a request to the user."""

    def replace(match: re.Match[str]) -> str:
        words = match.group(1).split()
        for length in range(min(3, len(words)), 0, -1):
            tool = _TOOLS.get(" ".join(words[:length]))
            if tool is not None:
                return f"the {tool} tool"
        return f"`pyro {match.group(1)}` (a command for the user to run on their machine)"

    return _COMMAND.sub(replace, message)


def validation_message(tool: str, errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line per argument: which one, and what is expected."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())) or "arguments"
        what = str(error.get("msg", "is not valid"))
        if error.get("type") == "missing":
            what = "is required"
        elif "input" in error and error.get("type") != "missing":
            what = f"{what[0].lower()}{what[1:]} (got {error['input']!r:.60})"
        parts.append(f"{where}: {what}")
    return f"{tool}: " + "; ".join(parts)
