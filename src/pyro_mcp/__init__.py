"""pyro: disposable microVM workspaces for chat-based coding agents.

The public SDK surface. Everything else is internal.

``Pyro`` and ``create_server`` load on first use: the per-VM supervisor
process and the guest-facing modules import ``pyro_mcp.*`` too, and must not
pay for the whole SDK (a warm start is a few hundred milliseconds in all).
"""

from typing import TYPE_CHECKING, Any

from pyro_mcp.errors import (
    AgentError,
    AgentProtocolError,
    AgentTimeout,
    EnvironmentBuildError,
    HostSetupError,
    InvalidArgument,
    NotFound,
    PatchConflict,
    PyroError,
    QuotaExceeded,
    RemoteError,
    StateError,
    StoreError,
    VMError,
)

if TYPE_CHECKING:
    from pyro_mcp.api import Pyro
    from pyro_mcp.mcp.factory import create_server

from pyro_mcp.version import __version__

__all__ = [
    "AgentError",
    "AgentProtocolError",
    "AgentTimeout",
    "EnvironmentBuildError",
    "HostSetupError",
    "InvalidArgument",
    "NotFound",
    "PatchConflict",
    "Pyro",
    "PyroError",
    "QuotaExceeded",
    "RemoteError",
    "StateError",
    "StoreError",
    "VMError",
    "__version__",
    "create_server",
]


def __getattr__(name: str) -> Any:
    if name == "Pyro":
        from pyro_mcp import api

        return api.Pyro
    if name == "create_server":
        from pyro_mcp.mcp import factory

        return factory.create_server
    raise AttributeError(f"module 'pyro_mcp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Pyro", "create_server"})
