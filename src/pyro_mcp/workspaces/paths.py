"""Paths inside /workspace, as the host names them."""

from __future__ import annotations

from pathlib import PurePosixPath

from pyro_mcp.errors import InvalidArgument

WORKSPACE_ROOT = PurePosixPath("/workspace")


def resolve_workspace_path(path: str) -> PurePosixPath:
    """``path`` (relative to /workspace, or absolute inside it) as an absolute guest path.

    Raises:
        InvalidArgument: the path leaves /workspace.
    """
    candidate = PurePosixPath(path)
    if not candidate.is_absolute():
        candidate = WORKSPACE_ROOT / candidate
    parts: list[str] = []
    for part in candidate.parts[1:]:
        if part == "..":
            if not parts:
                raise InvalidArgument("path", f"{path!r} is outside /workspace")
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    resolved = PurePosixPath("/", *parts)
    if resolved != WORKSPACE_ROOT and WORKSPACE_ROOT not in resolved.parents:
        raise InvalidArgument("path", f"{path!r} is outside /workspace")
    return resolved


def workspace_relative(guest_path: str) -> str:
    """``/workspace/a/b`` as ``a/b`` (``.`` for /workspace itself)."""
    relative = str(PurePosixPath(guest_path).relative_to(WORKSPACE_ROOT))
    return relative or "."
