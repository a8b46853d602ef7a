"""The SDK's face: ``Pyro`` (also pyro-mcp 4.5's ``from pyro_mcp.api import Pyro``).

``Pyro`` here is the engine-side ``pyro_mcp.sdk.Pyro`` plus what only a
surface can give: ``create_server``, the MCP server over this ``Pyro``. The
MCP factory sits above the SDK (it builds tools out of ``Pyro`` methods), so
the method lives at this level, where importing both points downward.
"""

from __future__ import annotations

from typing import Any

from pyro_mcp import sdk


class Pyro(sdk.Pyro):
    __doc__ = sdk.Pyro.__doc__

    def create_server(
        self, profile: str | None = None, mode: str | None = None, **options: Any
    ) -> Any:
        """The MCP server ``pyro mcp serve`` runs, over this ``Pyro`` (local or
        remote): ``pyro_mcp.create_server(profile, mode, pyro=self, **options)``,
        whose keyword arguments it takes (``project_path``, ``repo_url``,
        ``repo_ref``, ``no_project_source``, ``environment``,
        ``allow_host_paths``, ``default_ttl_seconds``). Run it with
        ``server.run()`` (stdio), or call its tools from a program:
        ``content, structured = await server.call_tool(name, args)``.
        """
        from pyro_mcp.mcp import factory

        return factory.create_server(profile, mode, pyro=self, **options)


__all__ = ["Pyro"]
