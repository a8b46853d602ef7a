"""Which host paths a model may make pyro read or write, through MCP.

A chat model drives the MCP server, and text inside the very repository it
works on can steer it. So every MCP argument that names a host path is
resolved (symlinks included) and must lie under an allowed root: the
server's project root and the directories given with ``--allow-host-path``.
With neither, MCP reaches no host path at all. The CLI and SDK, driven by the
person, keep their full reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyro_mcp.errors import InvalidArgument

FLAG = "pyro mcp serve --allow-host-path DIR"


class HostPathPolicy:
    """The allowed roots, and checks of paths against them."""

    def __init__(self, roots: Sequence[Path], *, refusal: str | None = None) -> None:
        """``refusal``: refuse every host path with this reason, before looking at
        the filesystem (``pyro server``: its files are nobody's seed or target)."""
        self.roots = [Path(root).resolve() for root in roots]
        self.refusal = refusal

    def readable(self, value: str, field: str) -> Path:
        """``value`` as a real path inside an allowed root, for reading.

        Raises:
            InvalidArgument: it does not exist, or resolves outside every root.
        """
        path = self._absolute(value, field)
        try:
            real = path.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as exc:
            raise InvalidArgument(field, f"{value} does not exist on the host") from exc
        self._require_inside(real, value, field)
        return real

    def writable(self, value: str, field: str) -> Path:
        """``value`` as a new file or directory path inside an allowed root; its
        missing parent directories are made by the export (as pyro-mcp 4.5 does).

        Raises:
            InvalidArgument: it exists (MCP never overwrites), is a symlink, has a
                ``..`` part, or it resolves outside every root.
        """
        path = self._absolute(value, field)
        if ".." in path.parts:
            raise InvalidArgument(field, f"{value} has a '..' part; give the path plainly")
        if path.is_symlink():
            raise InvalidArgument(field, f"{value} is a symlink; pyro never writes through one")
        if path.exists():
            raise InvalidArgument(
                field, f"{value} exists; exports through MCP never overwrite, choose a new path"
            )
        existing = path.parent
        while not existing.exists() and not existing.is_symlink():
            existing = existing.parent
        try:
            parent = existing.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as exc:
            raise InvalidArgument(field, f"the directory {existing} cannot be resolved") from exc
        target = parent / path.relative_to(existing)
        self._require_inside(target, value, field)
        return target

    def _absolute(self, value: str, field: str) -> Path:
        if self.refusal is not None:
            raise InvalidArgument(field, self.refusal)
        if not isinstance(value, str) or not value or "\0" in value:
            raise InvalidArgument(field, "must be a host path")
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        if not self.roots:
            raise InvalidArgument(field, self._nothing_allowed(value))
        return self.roots[0] / path  # relative paths are relative to the project

    def _require_inside(self, real: Path, value: str, field: str) -> None:
        if not self.roots:
            raise InvalidArgument(field, self._nothing_allowed(value))
        if not any(real == root or root in real.parents for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise InvalidArgument(
                field,
                f"{value} resolves to {real}, outside the host paths this server may use "
                f"({allowed}). The user can allow a directory with `{FLAG}`.",
            )

    @staticmethod
    def _nothing_allowed(value: str) -> str:
        return (
            f"{value}: this server may use no host paths (no project source and no allowed "
            f"directories). The user can allow a directory with `{FLAG}`."
        )
