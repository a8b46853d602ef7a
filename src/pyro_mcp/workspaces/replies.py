"""Checking what the guest returns for file listings, reads and diffs.

The guest is untrusted: every field is type-checked and every size bounded
here before the data reaches a surface.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import PurePosixPath
from typing import Any

from pyro_mcp.errors import AgentProtocolError
from pyro_mcp.workspaces.paths import WORKSPACE_ROOT

MAX_READ_BYTES = 4 * 1024 * 1024
DEFAULT_READ_BYTES = 64 * 1024
MAX_LIST_ENTRIES = 10_000
MAX_PATCH_CHARS = 4 * 1024 * 1024 + 65536
MAX_DIFF_CHANGES = 100_000
ENTRY_TYPES = frozenset({"file", "directory", "symlink", "other"})
CHANGE_STATUSES = frozenset({"added", "modified", "deleted", "type_changed", "mode_changed"})


def listing_entry(
    path: str, kind: str, size: int, mode: int, link_target: str | None = None
) -> dict[str, Any]:
    """One file listing entry as pyro-mcp 4.5 shows it: ``path`` absolute under
    /workspace, ``artifact_type``, ``size_bytes``, ``link_target``; and ``mode``."""
    return {
        "path": absolute(path),
        "artifact_type": kind,
        "size_bytes": size,
        "link_target": link_target,
        "mode": mode & 0o7777,
    }


def absolute(relative: str) -> str:
    """A path relative to /workspace as the absolute guest path."""
    relative = relative.lstrip("/")
    return str(WORKSPACE_ROOT / relative) if relative not in ("", ".") else str(WORKSPACE_ROOT)


def shown(path: str) -> str:
    """An absolute guest path as the shorter one relative to /workspace, for people."""
    try:
        return str(PurePosixPath(path).relative_to(WORKSPACE_ROOT))
    except ValueError:
        return path


def check_listing(reply: dict[str, Any]) -> dict[str, Any]:
    entries = _list(reply, "entries", MAX_LIST_ENTRIES)
    checked = [
        listing_entry(
            _str(entry, "path"),
            _choice(entry, "type", ENTRY_TYPES),
            _int(entry, "size"),
            _int(entry, "mode"),
            _str(entry, "link_target") if "link_target" in entry else None,
        )
        for entry in entries
    ]
    return {
        "path": absolute(_str(reply, "path")),
        "entries": checked,
        "truncated": _bool(reply, "truncated"),
    }


def check_read(reply: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    try:
        data = base64.b64decode(_str(reply, "content"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentProtocolError("file content is not base64") from exc
    size = _int(reply, "size")
    binary = _bool(reply, "binary")
    kept = data[:max_bytes]
    return {
        "path": _str(reply, "path"),
        "size": size,
        "binary": binary,
        "truncated": _bool(reply, "truncated") or len(data) > max_bytes or size > len(kept),
        "content": None if binary else kept.decode("utf-8", errors="replace"),
        "content_base64": base64.b64encode(kept).decode("ascii") if binary else None,
        "bytes_returned": len(kept),
    }


def check_diff(reply: dict[str, Any]) -> dict[str, Any]:
    changes = []
    for change in _list(reply, "changes", MAX_DIFF_CHANGES):
        item: dict[str, Any] = {
            "path": _str(change, "path"),
            "status": _choice(change, "status", CHANGE_STATUSES),
            "type": _choice(change, "type", ENTRY_TYPES),
            "binary": _bool(change, "binary"),
        }
        for optional in ("old_mode", "mode"):
            if optional in change:
                item[optional] = _int(change, optional) & 0o7777
        if "old_type" in change:
            item["old_type"] = _choice(change, "old_type", ENTRY_TYPES)
        changes.append(item)
    patch = _str(reply, "patch")
    if len(patch) > MAX_PATCH_CHARS:
        raise AgentProtocolError("the diff text exceeds its bound")
    counts = {
        status: sum(c["status"] == status for c in changes) for status in sorted(CHANGE_STATUSES)
    }
    return {
        "changed": bool(changes),
        "changes": changes,
        # pyro-mcp 4.5's name; `total` is every change.
        "summary": {**counts, "total": len(changes)},
        "patch": patch,
        "patch_truncated": _bool(reply, "patch_truncated"),
    }


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or len(value) > MAX_PATCH_CHARS * 2:
        raise AgentProtocolError(f"guest reply field {name} must be text")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AgentProtocolError(f"guest reply field {name} must be a non-negative integer")
    return value


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise AgentProtocolError(f"guest reply field {name} must be true or false")
    return value


def _choice(data: dict[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = _str(data, name)
    if value not in allowed:
        raise AgentProtocolError(f"guest reply field {name} has unknown value {value[:40]!r}")
    return value


def _list(data: dict[str, Any], name: str, limit: int) -> list[dict[str, Any]]:
    value = data.get(name)
    if (
        not isinstance(value, list)
        or len(value) > limit
        or not all(isinstance(v, dict) for v in value)
    ):
        raise AgentProtocolError(
            f"guest reply field {name} must be a list of at most {limit} objects"
        )
    return value
