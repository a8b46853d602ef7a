"""Chat hosts: registering pyro with Claude Code, Codex and OpenCode, and checking it.

The SDK face of ``pyro host``: each function returns what the command prints
with ``--json``. ``options`` is a ``ServerOptions`` (the ``pyro mcp serve``
command a host is given; ``remote``/``token_env`` make it a bridge to a
``pyro server``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_mcp.hosts.server_command import ServerOptions


def connect_host(
    host: str, options: ServerOptions | None = None, *, scope: str = "user"
) -> dict[str, Any]:
    """Register pyro with ``claude-code``, ``codex`` or ``opencode`` (see ``pyro host``)."""
    from pyro_mcp.hosts import service

    return service.connect(host, options or ServerOptions(), scope=scope)


def host_config(
    host: str, options: ServerOptions | None = None, *, scope: str = "user"
) -> dict[str, Any]:
    """The config snippet for ``host`` (also ``claude-desktop``, ``cursor`` and
    ``generic``, whose snippets are pasted) and where it goes."""
    from pyro_mcp.hosts import service

    return service.print_config(host, options or ServerOptions(), scope=scope)


def repair_host(
    host: str,
    options: ServerOptions | None = None,
    *,
    scope: str = "user",
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Rewrite pyro's entry in the host's config (``config_path``, or where the
    host keeps it) in place, after a backup."""
    from pyro_mcp.hosts import service

    path = Path(config_path) if config_path is not None else None
    return service.repair(host, options or ServerOptions(), scope=scope, config_path=path)


def doctor_hosts(
    *,
    health: bool = True,
    options: ServerOptions | None = None,
    host: str | None = None,
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Every host's pyro entry (or ``host``'s, read from ``config_path`` when
    given), whether it matches what ``connect_host`` with ``options`` writes,
    and whether it really starts."""
    from pyro_mcp.hosts import service

    path = Path(config_path) if config_path is not None else None
    return service.doctor(health=health, options=options, host=host, config_path=path)


__all__ = ["ServerOptions", "connect_host", "doctor_hosts", "host_config", "repair_host"]
