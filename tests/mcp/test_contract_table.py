"""docs/public-contract.md's MCP table is checked against the live server, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from mcp import Client
from pyro_mcp import Pyro, create_server
from pyro_mcp.mcp import profiles

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "public-contract.md"
COLUMNS = (
    "vm-run",
    "workspace-core",
    "workspace-full",
    "repro-fix",
    "inspect",
    "cold-start",
    "review-eval",
)


def documented() -> dict[str, tuple[set[str], set[str]]]:
    """tool -> (its documented arguments, the profiles and modes marked for it)."""
    rows: dict[str, tuple[set[str], set[str]]] = {}
    text = CONTRACT.read_text()
    table = text[text.index("| tool | arguments | vm-run |") :].split("\n\n", 1)[0]
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 + len(COLUMNS) or not cells[0].startswith("`"):
            continue
        tool = cells[0].strip("`")
        arguments = set(re.findall(r"`([a-z_]+)`", cells[1]))
        marked = {column for column, cell in zip(COLUMNS, cells[2:], strict=True) if cell}
        rows[tool] = (arguments, marked)
    return rows


def live(pyro: Pyro, flag: str, name: str) -> dict[str, set[str]]:
    server = create_server(
        **({"mode": name} if flag == "mode" else {"profile": name}),
        pyro=pyro,
        no_project_source=True,
    )

    async def listing() -> dict[str, set[str]]:
        async with Client(server) as client:
            tools = (await client.list_tools()).tools
            return {t.name: set((t.input_schema or {}).get("properties", {})) for t in tools}

    return anyio.run(listing)


@pytest.fixture
def sdk(tmp_path: Path, cache_dir: Path) -> Pyro:
    return Pyro(state_dir=tmp_path / "state", cache_dir=cache_dir)


def test_every_profile_and_mode_serves_exactly_the_documented_tools(sdk: Pyro) -> None:
    table = documented()
    assert len(table) > 40
    for column in COLUMNS:
        flag = "mode" if column in profiles.MODES else "profile"
        served = live(sdk, flag, column)
        expected = {tool for tool, (_, marked) in table.items() if column in marked}
        assert set(served) == expected, column


def test_every_tool_takes_exactly_the_documented_arguments(sdk: Pyro) -> None:
    table = documented()
    full = live(sdk, "profile", "workspace-full")
    core = live(sdk, "profile", "workspace-core")
    for tool, (arguments, _) in table.items():
        assert full[tool] == arguments, tool
    # Outside workspace-full, the arguments after "in workspace-full also" are gone.
    text = CONTRACT.read_text()
    for tool in ("workspace_create", "workspace_update"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{tool}` |"))
        arguments = row.split("|")[2]
        assert "in workspace-full also" in arguments, tool
        common = set(re.findall(r"`([a-z_]+)`", arguments.split("in workspace-full also")[0]))
        assert core[tool] == common, tool


def test_the_help_of_mcp_serve_names_what_each_mode_exposes() -> None:
    from pyro_mcp.cli.mcp import EPILOG

    for mode in profiles.MODES:
        assert mode in EPILOG
    assert "give a mode or a profile" in EPILOG
