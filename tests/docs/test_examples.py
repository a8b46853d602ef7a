"""examples/: each Python example runs against real guests, the model-facing
tool definitions match the live MCP server, and each host config example is
what `pyro host print-config` prints (for a user whose home is /home/you, with
pyro installed by `uv tool install`).

    uv run python -m tests.docs.test_examples --write   # regenerate the config examples
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from pyro_mcp import create_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HOME = "/home/you"
PRINT_CONFIG = [sys.executable, "-m", "pyro_mcp.cli.main", "host", "print-config"]

# Each host config example: the file, and the print-config command it is the output of.
CONFIG_FILES = {
    "claude_desktop_mcp_config.json": "claude-desktop",
    "cursor_mcp_config.json": "cursor",
    "opencode_mcp_config.json": "opencode",
}
# Markdown examples: each fenced block tagged `<!-- print-config HOST -->` holds that output.
MARKDOWN_FILES = ("claude_code_mcp.md", "codex_mcp.md", "mcp_client_config.md")
MARKED = re.compile(r"<!-- print-config ([a-z-]+) -->\n```[a-z]*\n(.*?)```", re.S)


def print_config(host: str) -> str:
    """`pyro host print-config HOST --installed-package`, as /home/you would get it."""
    with tempfile.TemporaryDirectory() as home:
        installed = Path(home) / ".local" / "bin" / "pyro"
        installed.parent.mkdir(parents=True)
        installed.write_text("#!/bin/sh\n")
        installed.chmod(0o755)
        done = subprocess.run(
            [*PRINT_CONFIG, host, "--installed-package"],
            env={**os.environ, "HOME": home, "PATH": "/usr/bin:/bin"},
            cwd=home,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.replace(home, HOME)


def rendered_markdown(text: str) -> str:
    return MARKED.sub(
        lambda m: f"<!-- print-config {m[1]} -->\n```{_fence(m[1])}\n{_block(m[1])}```", text
    )


def _block(host: str) -> str:
    return print_config(host).rstrip("\n") + "\n"


def _fence(host: str) -> str:
    return "toml" if host == "codex" else "json"


def test_each_host_config_example_is_what_print_config_prints() -> None:
    for name, host in CONFIG_FILES.items():
        assert (EXAMPLES / name).read_text() == print_config(host), (
            f"examples/{name} is stale: run `make examples`"
        )
    for name in MARKDOWN_FILES:
        text = (EXAMPLES / name).read_text()
        assert MARKED.search(text), f"examples/{name} has no print-config block"
        assert text == rendered_markdown(text), f"examples/{name} is stale: run `make examples`"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _live_schema(profile: str, tool: str) -> dict[str, Any]:
    server = create_server(profile=profile, no_project_source=True)
    listed = anyio.run(server.list_tools)
    return next(t.input_schema for t in listed if t.name == tool)


def test_the_model_facing_tool_definitions_match_the_live_server() -> None:
    live = _live_schema("vm-run", "vm_run")
    declared = _load("openai_responses_vm_run").VM_RUN_TOOL["parameters"]
    assert set(declared["properties"]) <= set(live["properties"])
    assert declared["required"] == live["required"] == ["command"]
    json_types = {"string": "string", "number": "number", "boolean": "boolean"}
    for name, field in declared["properties"].items():
        assert live["properties"][name]["type"] == json_types[field["type"]], name
    signature = inspect.signature(_load("langchain_vm_run").vm_run)
    assert set(signature.parameters) <= set(live["properties"])
    assert [p for p, v in signature.parameters.items() if v.default is v.empty] == ["command"]


def _run(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        env={k: v for k, v in env.items() if k != "OPENAI_API_KEY"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


EXPECTED = {
    "python_run": ['"reason": "post_exec_cleanup"', "git version"],
    "python_lifecycle": ["first exec kept the VM", "is gone: exec_vm deleted it"],
    "python_shell": ["hello from the shell"],
    "python_workspace": [
        "seeded 2 files into /workspace",
        "before the fix: exit 1",
        "checkpoint: before-fix",
        "after the fix: exit 0: tests pass",
        "service worker: running",
        "exported a file to",
        "reset #1 to before-fix: exit 1 again",
    ],
    "openai_responses_vm_run": ["OPENAI_API_KEY is not set", "git version"],
    "openai_responses_workspace_core": [
        "tools from the workspace-core profile",
        "workspace_exec: exit 0, stdout 'hi'",
    ],
    "langchain_vm_run": ['"stdout": "Linux\\n"'],
    "agent_vm_run": ["the server offers: vm_run", "git version"],
}


@pytest.mark.vm
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_python_example_runs_against_real_guests(name: str, cli_env: dict[str, str]) -> None:
    said = _run(cli_env, name)  # cli_env fails the test if a guest outlives it
    for expected in EXPECTED[name]:
        assert expected in said, said


def test_every_example_file_is_checked() -> None:
    checked = {f"{name}.py" for name in EXPECTED} | set(CONFIG_FILES) | set(MARKDOWN_FILES)
    assert {p.name for p in EXAMPLES.iterdir() if not p.name.startswith(".")} == checked


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.docs.test_examples --write")
    for name, host in CONFIG_FILES.items():
        (EXAMPLES / name).write_text(print_config(host))
    for name in MARKDOWN_FILES:
        path = EXAMPLES / name
        path.write_text(rendered_markdown(path.read_text()))
