"""An MCP client over stdio against `pyro mcp serve`, and a Git project to serve."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mcp import Client, StdioServerParameters
from pyro_mcp.environments.cache import InstalledEnvironment

APP = "def add(a, b):\n    return a - b\n"
TEST = (
    "python3 -c 'import sys; sys.path.insert(0, \"src\"); import app; assert app.add(2, 2) == 4'\n"
)


@asynccontextmanager
async def mcp_client(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pyro_mcp.cli.main", "mcp", "serve", *args],
        env=env,
        cwd=str(cwd) if cwd else None,
    )
    async with Client(params, read_timeout_seconds=600) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; returns its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.content and result.content[0].type == "text"
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """A tool call that must fail as a tool error; returns its message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(block.text for block in result.content if block.type == "text")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Git checkout with a failing test, ignored build output and an untracked file."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP)
    (root / "test.sh").write_text(TEST)
    (root / "gone.txt").write_text("tracked, then deleted from the working tree\n")
    (root / ".gitignore").write_text("build/\n")
    git = ["git", "-C", str(root), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    (root / "gone.txt").unlink()
    (root / "build").mkdir()
    (root / "build" / "output.bin").write_bytes(b"\0" * 64)
    (root / "untracked.txt").write_text("not in git\n")
    return root


@pytest.fixture
def mcp_env(cli_env: dict[str, str], built_environment: InstalledEnvironment) -> dict[str, str]:
    return cli_env
