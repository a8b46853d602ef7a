"""How a ``Pyro`` reaches its engine: here (``LocalTransport``, the default) or
a ``pyro server`` on another machine (``RemoteTransport``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyro_mcp.transport.remote import RemoteTransport


@dataclass(frozen=True)
class LocalTransport:
    """The engine in this process: QEMU guests on this machine.

    Args:
        state_dir: where records and VM disks live (default ``PYRO_HOME`` or
            ``$XDG_DATA_HOME/pyro``).
        cache_dir: where environments are built (default ``PYRO_CACHE_DIR`` or
            ``$XDG_CACHE_HOME/pyro``).
    """

    state_dir: str | Path | None = None
    cache_dir: str | Path | None = None


class Transport(Protocol):
    """Anything that runs SDK calls elsewhere: ``call(method, arguments, progress)``."""

    def call(self, method: str, arguments: dict[str, Any], progress: Any) -> Any: ...


__all__ = ["LocalTransport", "RemoteTransport", "Transport"]
