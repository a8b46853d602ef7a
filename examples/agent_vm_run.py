"""An agent loop over MCP: start `pyro mcp serve` the way a chat host does (a
child process on stdio), list its tools, and let a planner choose `vm_run`
calls until it is done. The planner here is a fixed list of steps; put a
model's decision in `plan` to make it a real agent.

    uv run python examples/agent_vm_run.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
from mcp.client.stdio import stdio_client

from mcp import Client, StdioServerParameters

SERVER = StdioServerParameters(
    command=sys.executable,
    args=["-m", "pyro_mcp.cli.main", "mcp", "serve", "--profile", "vm-run", "--no-project-source"],
)


def plan() -> Iterator[dict[str, Any]]:
    """The next tool call, given nothing but the goal (a model would see results)."""
    yield {"command": "cat /etc/debian_version"}
    yield {"command": "python3 -c 'import sys; print(sys.version.split()[0])'"}
    yield {"command": "git --version"}


async def agent() -> None:
    async with Client(stdio_client(SERVER)) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        print(f"the server offers: {', '.join(tools)}")
        for arguments in plan():
            result = await client.call_tool("vm_run", arguments)
            structured = result.structured_content or {}
            print(f"$ {arguments['command']}\n{structured.get('stdout', '').strip()}")


if __name__ == "__main__":
    anyio.run(agent)
