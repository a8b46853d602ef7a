"""The ``Pyro`` every CLI command uses: local, or remote with ``pyro --remote URL``
(or ``PYRO_REMOTE``), the token from ``PYRO_TOKEN``."""

from __future__ import annotations

import os
from typing import Any

from pyro_mcp.sdk import Progress, Pyro
from pyro_mcp.transport import RemoteTransport

_remote: RemoteTransport | None = None


def remote_settings(
    url: str | None, token_env: str = "PYRO_TOKEN"
) -> tuple[str, str | None, str | None] | None:
    """(url, token, CA file) of the remote to use, or None for the local engine."""
    url = url or os.environ.get("PYRO_REMOTE") or None
    if url is None:
        return None
    return url, os.environ.get(token_env) or None, os.environ.get("PYRO_REMOTE_CA") or None


def configure(url: str | None) -> None:
    """Use the server at ``url`` (or ``PYRO_REMOTE``) for every command; None: local."""
    global _remote
    settings = remote_settings(url)
    _remote = None
    if settings is not None:
        url, token, ca_file = settings
        _remote = RemoteTransport(url, token, ca_file=ca_file)


def remote() -> RemoteTransport | None:
    return _remote


def pyro(progress: Progress | None = None, **_: Any) -> Pyro:
    return Pyro(progress=progress, transport=_remote)
