"""The human rendering of a workspace summary (shared by the CLI and MCP)."""

from __future__ import annotations

from typing import Any


def render_summary(summary: dict[str, Any]) -> str:
    lines = [f"workspace {summary['name'] or summary['workspace_id']} ({summary['state']})"]
    commands = summary["commands"]
    lines.append(f"commands: {len(commands)} run, {summary['failed_commands']} failed")
    for command in commands[-10:]:
        lines.append(f"  [{command['exit_code']}] {command['command']}")
    for kind, entries in summary["operations"].items():
        if entries:
            lines.append(f"{kind}: {len(entries)}")
    if summary["changes"] is not None:
        files = summary["changes"]["files"]
        lines.append(f"files changed: {len(files)}")
        for change in files[:20]:
            lines.append(f"  {change['status']:<9} {change['path']}")
        if len(files) > 20:
            lines.append(f"  ... and {len(files) - 20} more")
    elif summary["note"]:
        lines.append(summary["note"])
    return "\n".join(lines)
