"""Imports point downward: a test over every import in src/, deferred and
TYPE_CHECKING ones included (they are real edges of the design even when the
interpreter does not follow them at load time).

The layers, top to bottom (docs/architecture.md):

    surfaces   cli, mcp, hosts, server, render (what both show people), the package face
               (with pyro-mcp 4.5's import paths: api, daily_loop, vm_manager)
    sdk        sdk, prepare, doctor, transport (local, or remote to a pyro server)
    workspaces workspaces/
    vm         vm/ (VmService in vm/service.py)
    base       agent/, store/, environments/, egress/, models, names, crossings,
               errors, config, host_tools, version
    guest      guest/ (standard library and agent/protocol.py only)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyro_mcp

SRC = Path(pyro_mcp.__file__).resolve().parent

LAYERS = {
    "guest": 0,
    "agent": 1,
    "store": 1,
    "environments": 1,
    "egress": 1,
    "models": 1,
    "names": 1,
    "crossings": 1,  # what SDK arguments reach beyond the engine, declared on them
    "errors": 1,
    "config": 1,
    "host_tools": 1,
    "version": 1,
    "vm": 2,
    "workspaces": 3,
    "sdk": 4,
    "transport": 4,  # how a Pyro reaches its engine: here, or a pyro server
    "prepare": 4,
    "doctor": 4,
    "cli": 5,
    "mcp": 5,
    "hosts": 5,
    "server": 5,  # pyro server: the engine over HTTP
    "render": 5,
    "__init__": 5,
    "api": 5,  # pyro-mcp 4.5's import paths, faces of the package
    "daily_loop": 5,
    "vm_manager": 5,
}
# Known upward edges, each a debt with its reason; the list may only shrink.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("pyro_mcp", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import module` imports the module; `from pkg import name`
            # imports pkg (its __init__). Either reads pkg's namespace, so a
            # package below the root counts as imported too: its __init__ runs
            # first and may import this very module (the root's __init__ only
            # re-exports errors and version, and loads the rest lazily).
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    targets.add(submodule)
                if base in modules and (submodule not in modules or _is_package(base, modules)):
                    targets.add(base)
    return targets - {name}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    """A package whose __init__ runs code of ours (an empty one imports nothing)."""
    path = modules[name]
    return name != "pyro_mcp" and path.name == "__init__.py" and "import" in path.read_text()


def _layer(module: str) -> tuple[str, int]:
    if module == "pyro_mcp.agent.protocol":
        return "agent.protocol", 0  # framing and constants the guest shares
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return key, LAYERS[key]


def test_every_module_has_a_layer() -> None:
    assert {_layer(name)[0] for name in _modules()} <= {*LAYERS, "agent.protocol"}


def test_imports_point_downward() -> None:
    modules = _modules()
    upward = set()
    for name, path in modules.items():
        rank = _layer(name)[1]
        for target in _imports(name, path, modules):
            target_rank = _layer(target)[1]
            if target_rank > rank and (name, target) not in ALLOWED_UPWARD:
                upward.add((name, target))
    assert sorted(upward) == [], "\n".join(f"{a} -> {b}" for a, b in sorted(upward))


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_a_module_reading_its_own_package_closes_a_circle(tmp_path: Path) -> None:
    """``from pyro_mcp.transport import wire`` inside a package whose __init__
    imports that module: the package's __init__ runs first, so it counts."""
    package = tmp_path / "transport"
    package.mkdir()
    (package / "__init__.py").write_text("from pyro_mcp.transport.remote import RemoteTransport\n")
    (package / "remote.py").write_text("from pyro_mcp.transport import wire\n")
    (package / "wire.py").write_text("X = 1\n")
    modules = {
        "pyro_mcp.transport": package / "__init__.py",
        "pyro_mcp.transport.remote": package / "remote.py",
        "pyro_mcp.transport.wire": package / "wire.py",
    }
    remote = _imports("pyro_mcp.transport.remote", modules["pyro_mcp.transport.remote"], modules)
    assert remote == {"pyro_mcp.transport", "pyro_mcp.transport.wire"}
    init = _imports("pyro_mcp.transport", modules["pyro_mcp.transport"], modules)
    assert "pyro_mcp.transport.remote" in init
