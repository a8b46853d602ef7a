"""A third-party MCP client: the MCP Inspector's CLI mode (pinned in tools/mcp-inspector)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mcp.test_server import EXPECTED

pytestmark = pytest.mark.vm

INSPECTOR = (
    Path(__file__).parents[2]
    / "tools"
    / "mcp-inspector"
    / "node_modules"
    / ".bin"
    / "mcp-inspector"
)


def inspector(env: dict[str, str], server_flags: list[str], *method: str) -> dict:
    assert INSPECTOR.exists(), "run `make test` (it runs npm ci in tools/mcp-inspector)"
    # The Inspector starts the server with a minimal environment of its own
    # (as MCP stdio clients do): the test's state and cache go with -e, or the
    # server would use (and on a new machine, build into) the user's.
    server_env = [
        arg
        for key, value in env.items()
        if key.startswith("PYRO_")
        for arg in ("-e", f"{key}={value}")
    ]
    done = subprocess.run(
        [
            str(INSPECTOR),
            "--cli",
            *server_env,
            sys.executable,
            "-m",
            "pyro_mcp.cli.main",
            "mcp",
            "serve",
            *server_flags,
            "--method",
            *method,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("profile", ["vm-run", "workspace-core", "workspace-full"])
def test_the_inspector_lists_each_profiles_tools(mcp_env: dict[str, str], profile: str) -> None:
    listed = inspector(mcp_env, ["--profile", profile, "--no-project-source"], "tools/list")
    assert {tool["name"] for tool in listed["tools"]} == EXPECTED[("--profile", profile)]


def test_the_inspector_creates_execs_in_and_deletes_a_workspace(mcp_env: dict[str, str]) -> None:
    flags = ["--no-project-source"]
    created = inspector(
        mcp_env,
        flags,
        "tools/call",
        "--tool-name",
        "workspace_create",
        "--tool-arg",
        "name=inspected",
    )
    assert created["structuredContent"]["name"] == "inspected"
    ran = inspector(
        mcp_env,
        flags,
        "tools/call",
        "--tool-name",
        "workspace_exec",
        "--tool-arg",
        "workspace_id=inspected",
        "--tool-arg",
        "command=uname -s",
    )
    assert ran["structuredContent"]["stdout"] == "Linux\n"
    deleted = inspector(
        mcp_env,
        flags,
        "tools/call",
        "--tool-name",
        "workspace_delete",
        "--tool-arg",
        "workspace_id=inspected",
    )
    assert deleted["structuredContent"]["deleted"] is True
