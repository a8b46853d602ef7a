"""The docs name only tools, arguments, tool counts and directories the code has.

Checked against the live MCP server (every profile and mode) and the real
default paths, over README.md and every page under docs/: a page that names
``workspace_sync_push.source`` when the argument is ``source_path``, lists "13
tools" when no profile serves 13, or sends an uninstall to a state directory
pyro does not use, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp import Client
from pyro_mcp import Pyro, create_server
from pyro_mcp.config import default_paths
from pyro_mcp.mcp import profiles

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOOL_LIKE = re.compile(r"`((?:vm|workspace|shell|service|snapshot)_[a-z_]+)(?:\.([a-z_]+))?`")
TOOL_COUNT = re.compile(r"\b(\d+) tools\b")
PYRO_DIR = re.compile(r"(?:~|/root|/home/me|\$HOME)/(\.local/(?!bin/)[a-z]+|\.cache)/pyro\b")


def _schema_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        names |= set(schema.get("properties", {}))
        for value in schema.values():
            names |= _schema_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _schema_names(value)
    return names


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every served tool's input and output names, and each profile's and mode's size."""
    pyro = Pyro(state_dir=tmp_path_factory.mktemp("state"))
    inputs: dict[str, set[str]] = {}
    outputs: set[str] = set()
    sizes: set[int] = set()

    async def listing(**selection: str) -> None:
        server = create_server(**selection, pyro=pyro, no_project_source=True)
        async with Client(server) as client:
            tools = (await client.list_tools()).tools
        sizes.add(len(tools))
        for tool in tools:
            inputs.setdefault(tool.name, set()).update(
                (tool.input_schema or {}).get("properties", {})
            )
            outputs.update(_schema_names(tool.output_schema or {}))

    for profile in profiles.PROFILES:
        anyio.run(lambda p=profile: listing(profile=p))
    for mode in profiles.MODES:
        anyio.run(lambda m=mode: listing(mode=m))
    return {"inputs": inputs, "outputs": outputs, "sizes": sizes}


def _lines(page: Path) -> list[tuple[int, str]]:
    return list(enumerate(page.read_text().splitlines(), start=1))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tools_and_arguments_named_in_the_docs_exist(page: Path, live: dict[str, Any]) -> None:
    inputs, outputs = live["inputs"], live["outputs"]
    arguments = set().union(*inputs.values())
    wrong = []
    for number, line in _lines(page):
        for name, argument in TOOL_LIKE.findall(line):
            if argument:
                if name not in inputs or argument not in inputs[name]:
                    wrong.append(f"{number}: {name}.{argument}")
            elif name not in inputs and name not in arguments and name not in outputs:
                wrong.append(f"{number}: {name}")
    assert wrong == [], f"{page.name} names what the live server does not have"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tool_counts_in_the_docs_are_real_profiles_or_modes(
    page: Path, live: dict[str, Any]
) -> None:
    counts = [
        (number, int(count)) for number, line in _lines(page) for count in TOOL_COUNT.findall(line)
    ]
    assert [c for c in counts if c[1] not in live["sizes"]] == [], sorted(live["sizes"])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_state_and_cache_directories_in_the_docs_are_the_real_defaults(
    page: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PYRO_HOME", "PYRO_CACHE_DIR", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/home/me")
    paths = default_paths()
    real = {
        str(paths.state_dir.relative_to("/home/me").parent),
        str(paths.cache_dir.relative_to("/home/me").parent),
    }
    named = [(n, d) for n, line in _lines(page) for d in PYRO_DIR.findall(line)]
    assert [(n, d) for n, d in named if d not in real] == [], f"pyro's directories: {real}"


def test_the_integrations_table_gives_each_profile_and_mode_its_real_size() -> None:
    rows = re.findall(
        r"^\| `--(profile|mode) ([a-z-]+)`([^|]*)\|([^|]*)\|",
        (ROOT / "docs" / "integrations.md").read_text(),
        re.M,
    )
    assert {(kind, name) for kind, name, _, _ in rows} == {
        *(("profile", p) for p in profiles.PROFILES),
        *(("mode", m) for m in profiles.MODES),
    }
    for kind, name, flag_cell, tools_cell in rows:
        stated = re.findall(r"\((\d+) tools\)", flag_cell + tools_cell)
        selection = {"profile": name} if kind == "profile" else {"mode": name}
        size = len(profiles.tool_names(selection.get("profile"), selection.get("mode")))
        assert [int(n) for n in stated] == ([size] if size > 1 else []), (kind, name, size)
