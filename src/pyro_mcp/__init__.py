"""pyro: disposable microVM workspaces for chat-based coding agents.

The public SDK surface. Everything else is internal.
"""

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
    StateError,
    StoreError,
    VMError,
)
from pyro_mcp.sdk import Pyro, create_server

__version__ = "0.1.0"

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
    "StateError",
    "StoreError",
    "VMError",
    "__version__",
    "create_server",
]
