"""What every group of MCP tools shares: the server's context, argument types, replies.

The tool modules (``tools_workspaces``, ``tools_files``, ``tools_processes``,
``tools_vms``) each build their tools as closures over a ``ToolContext``, so
the signatures the MCP SDK reads for each tool's schema name only what a model
may send; this module holds the pieces they have in common.
"""

# No `from __future__ import annotations`: the MCP SDK reads the argument
# types defined here at runtime, through the tools' signatures.

from dataclasses import dataclass
from typing import Annotated, Any

from mcp_types import CallToolResult, TextContent
from pydantic import Field

from pyro_mcp.mcp.host_paths import HostPathPolicy
from pyro_mcp.sdk import Pyro
from pyro_mcp.workspaces.project_source import ProjectSource

# A tool whose arguments are narrower outside workspace-full is kept under this
# prefix (workspace_create: no secrets or network policy in core and the modes).
CORE_VARIANT = "core:"
# How much of each output stream the text rendering shows; the structured
# content carries up to pyro's full bound (1 MiB).
TEXT_STREAM_CHARS = 16 * 1024


@dataclass(frozen=True)
class ToolContext:
    """What the server was started with, as the tools need it."""

    pyro: Pyro
    source: ProjectSource
    default_environment: str
    policy: HostPathPolicy
    default_ttl: int | None
    default_idle_suspend: int
    # The operator's egress switches for every workspace the server creates.
    operator_egress: dict[str, bool]


WorkspaceId = Annotated[
    str, Field(description="The workspace_id returned by workspace_create (its name works too).")
]
VmId = Annotated[str, Field(description="The vm_id returned by vm_create.")]
Command = Annotated[
    str, Field(description="A shell command line, run with /bin/sh -c (pipes, &&, redirects work).")
]
Timeout = Annotated[
    float, Field(description="Kill the command after this many seconds.", gt=0, le=86400)
]
WorkspacePath = Annotated[
    str, Field(description="A path relative to /workspace (or absolute inside it).")
]
MaxBytes = Annotated[
    int, Field(description="Return at most this many bytes.", ge=1, le=4 * 1024 * 1024)
]
IncludeIgnored = Annotated[
    bool,
    Field(
        description="Also show what the project's .gitignore rules ignore (caches, build "
        "output, virtualenvs); left out by default for a workspace seeded from a Git project."
    ),
]


def reply(text: str, data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def render_command(result: dict[str, Any]) -> str:
    head = f"exit_code={result['exit_code']} duration_ms={result['duration_ms']}"
    if result["timed_out"]:
        head += " TIMED OUT (killed)"
    parts = [head]
    for stream in ("stdout", "stderr"):
        text = result[stream]
        if not text:
            continue
        note = ""
        if len(text) > TEXT_STREAM_CHARS:
            text = text[-TEXT_STREAM_CHARS:]
            note = f" (last {TEXT_STREAM_CHARS} characters; the structured result has more)"
        elif result[f"{stream}_truncated"]:
            note = " (truncated at 1 MiB)"
        parts.append(f"--- {stream}{note} ---\n{text}")
    return "\n".join(parts)


def render_service(status: dict[str, Any]) -> str:
    line = f"service {status['name']}: {status['state']}"
    if status.get("exit_code") is not None:
        line += f" (exit code {status['exit_code']})"
    if status.get("reason"):
        line += f": {status['reason']}"
    for port in status.get("published_ports", []):
        address = f"http://{port['host']}:{port['host_port']}"
        line += f"; published at {address} (guest port {port['guest_port']})"
    return line


def render_workspace(workspace: dict[str, Any]) -> str:
    seed = workspace["seed"]
    origin = workspace["origin_kind"] + (
        f" {workspace['origin_ref']}" if workspace["origin_ref"] else ""
    )
    line = (
        f"workspace {workspace['workspace_id']} ({workspace['name'] or 'unnamed'}): "
        f"{workspace['state']}, "
        f"{workspace['environment']}, files from {origin} ({seed['file_count']} files)"
    )
    if workspace.get("last_error"):
        line += f"\nlast error: {workspace['last_error']}"
    return line
