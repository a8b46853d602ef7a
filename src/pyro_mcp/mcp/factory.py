"""``pyro_mcp.create_server``: the MCP server ``pyro mcp serve`` runs, for SDK users."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.mcp import server
from pyro_mcp.sdk import Pyro
from pyro_mcp.workspaces import project_source


def create_server(
    profile: str | None = None,
    mode: str | None = None,
    *,
    pyro: Pyro | None = None,
    project_path: str | Path | None = None,
    repo_url: str | None = None,
    repo_ref: str | None = None,
    no_project_source: bool = False,
    environment: str = config.DEFAULT_ENVIRONMENT,
    allow_host_paths: Sequence[str | Path] = (),
    default_ttl_seconds: int = config.MCP_DEFAULT_TTL_SECONDS,
) -> Any:
    """The MCP server object (``mcp.server.mcpserver.MCPServer``) over ``pyro``
    (default: ``Pyro()``; a remote one serves a ``pyro server``'s guests).

    The default seed of ``workspace_create`` is found as ``pyro mcp serve``
    finds it: ``project_path`` or ``repo_url`` when given, else the Git
    checkout around the current directory; ``no_project_source=True``
    starts workspaces empty (unless the tool is given a seed_path).
    Workspaces the server creates without a ``ttl_seconds`` get
    ``default_ttl_seconds`` of idle time (24 h; 0: never).
    Run it with ``server.run()`` (stdio).
    """
    client = pyro or Pyro()
    source = project_source.resolve(
        cwd=Path.cwd(),
        cache_dir=client.paths.cache_dir,
        project_path=str(project_path) if project_path is not None else None,
        repo_url=repo_url,
        repo_ref=repo_ref,
        no_project_source=no_project_source,
    )
    return server.create_server(
        profile,
        mode,
        pyro=client,
        project=source,
        environment=environment,
        allow_host_paths=[Path(p) for p in allow_host_paths],
        default_ttl_seconds=default_ttl_seconds,
    )
