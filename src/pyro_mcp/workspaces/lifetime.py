"""Workspace lifetimes that follow activity.

``ttl_seconds`` is an idle timeout: every operation moves ``expires_at`` to
``last_activity_at + ttl_seconds``. ``max_lifetime_seconds`` caps the total,
counted from creation. Within the last 10% of whichever window applies,
results carry a ``warning``.
"""

from __future__ import annotations

import time
from typing import Any

WARNING_FRACTION = 0.1


def expires_at(workspace: dict[str, Any]) -> float | None:
    """When the workspace expires given its activity, or None for never."""
    candidates = []
    if workspace.get("ttl_seconds"):
        candidates.append(workspace["last_activity_at"] + workspace["ttl_seconds"])
    if workspace.get("max_lifetime_seconds"):
        candidates.append(workspace["created_at"] + workspace["max_lifetime_seconds"])
    return min(candidates) if candidates else None


def describe(workspace: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``idle_seconds`` and, near expiry, a ``warning`` saying what to do."""
    now = time.time() if now is None else now
    idle = max(0.0, now - workspace["last_activity_at"])
    fields: dict[str, Any] = {"idle_seconds": round(idle, 1)}
    expiry = workspace.get("expires_at")
    if expiry is None:
        return fields
    remaining = expiry - now
    by_lifetime = workspace.get("max_lifetime_seconds") and (
        expiry == workspace["created_at"] + workspace["max_lifetime_seconds"]
    )
    window = workspace["max_lifetime_seconds"] if by_lifetime else workspace.get("ttl_seconds")
    if window and remaining <= window * WARNING_FRACTION:
        if by_lifetime:
            fields["warning"] = (
                f"this workspace reaches its max_lifetime_seconds in {max(0, int(remaining))} s "
                "and will then be deleted; export what you need now"
            )
        else:
            fields["warning"] = (
                f"this workspace expires after {max(0, int(remaining))} s more of inactivity "
                "(ttl_seconds); any operation on it extends that"
            )
    return fields
