"""pyro-mcp 4.5's import path for the daily loop's default: the environment
``pyro prepare`` warms when none is named."""

from pyro_mcp.config import DEFAULT_ENVIRONMENT as DEFAULT_PREPARE_ENVIRONMENT

__all__ = ["DEFAULT_PREPARE_ENVIRONMENT"]
