"""Run the pyro CLI as a Windows laptop would import it: any POSIX-only module
(fcntl, termios, pty, resource, grp, tty) that a pyro_mcp module imports fails.

    python tests/server/windows_like.py ARGS...   (the same as `pyro ARGS...`)

Third-party packages keep their own platform checks; only pyro's imports are
held to this.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import FrameType

POSIX_ONLY = {"fcntl", "termios", "pty", "resource", "grp", "tty"}


class PosixOnlyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.split(".")[0] not in POSIX_ONLY:
            return None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("importlib", "_frozen")
        ):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer.startswith("pyro_mcp"):
            raise ImportError(f"{importer} imports {name}, which Windows does not have")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, PosixOnlyImports())
    for module in POSIX_ONLY:
        sys.modules.pop(module, None)
    from pyro_mcp.cli.main import main

    sys.exit(main(sys.argv[1:]))
