"""pyro-mcp 4.5's import path for the SDK: ``from pyro_mcp.api import Pyro``."""

from pyro_mcp.sdk import Pyro

__all__ = ["Pyro"]
