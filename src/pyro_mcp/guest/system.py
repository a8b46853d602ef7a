"""What several guest modules share: libc, "am I in the guest", quiet file writes
(standard library only)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Any

try:
    from pyro_mcp.guest import fileops
except ImportError:  # inside the guest, beside this file
    import fileops  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError


def write_file(path: str, text: str) -> None:
    with contextlib.suppress(OSError):
        with open(path + ".pyro-tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".pyro-tmp", path)


@functools.lru_cache(maxsize=1)
def libc() -> Any:
    """libc, loaded once (in a warm snapshot, already loaded in every restored guest).

    mount(2) directly: spawning mount(8) costs a process start, which under
    TCG is a large share of a warm start.
    """
    return ctypes.CDLL(None, use_errno=True)


def write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".pyro-tmp", "wb") as handle:
        handle.write(data)
    os.replace(path + ".pyro-tmp", path)


def is_guest() -> bool:
    return os.environ.get("PYRO_GUEST") == "1"
