"""The server's audit trail: one JSON line per call in ``PYRO_HOME/audit.jsonl``.

Each line says when, which principal, which method, the workspace, VM or
environment it named, whether it was allowed (``result``: ``ok``, ``refused``
by the server's checks, or ``failed`` in the engine), why not, and how long it
took. Argument values never appear: they may hold secrets or file contents.

The file is rotated by size (``audit.jsonl.1`` is the newest old one, up to
``KEEP`` of them). A server that cannot write it refuses calls, and says so,
rather than run unaudited.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyro_mcp.errors import InvalidArgument, NotFound, QuotaExceeded, StoreError

FILE_NAME = "audit.jsonl"
MAX_BYTES = 16 * 1024 * 1024
KEEP = 4
MAX_REASON = 300
# Errors the server's own checks raise before the engine acts: a refusal.
REFUSALS = (InvalidArgument, NotFound, QuotaExceeded)
# The arguments that name what a call acts on (their values are names and ids,
# never contents); the first present is the call's target.
TARGETS = ("workspace", "vm_id", "environment", "name", "reference")


class AuditLog:
    """Appends call records to ``path`` (thread-safe), rotating at ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise unless a record can be appended now.

        Raises:
            StoreError: the file cannot be opened for appending (the message says
                the server refuses calls until it can).
        """
        try:
            with self._open():
                pass
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def record(
        self,
        *,
        principal: str,
        method: str,
        arguments: dict[str, Any],
        error: BaseException | None,
        seconds: float,
        size_bytes: int | None = None,
    ) -> None:
        """Append one call's line (an upload's or download's with ``size_bytes``).

        Raises:
            StoreError: it could not be written.
        """
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "principal": principal,
            "method": method,
        }
        for key in TARGETS:
            value = arguments.get(key)
            if isinstance(value, str) and value:
                entry[key] = value[:200]
        if error is None:
            entry["result"] = "ok"
        else:
            entry["result"] = "refused" if isinstance(error, REFUSALS) else "failed"
            entry["error"] = type(error).__name__
            entry["reason"] = str(error)[:MAX_REASON]
        entry["allowed"] = entry["result"] != "refused"
        entry["duration_ms"] = round(seconds * 1000)
        if size_bytes is not None:
            entry["bytes"] = size_bytes
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                if self._size() + len(line) > self.max_bytes:
                    self._rotate()
                with self._open() as stream:
                    stream.write(line)
            except OSError as exc:
                raise self._unwritable(exc) from exc

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(descriptor, "a", encoding="utf-8")

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def _unwritable(self, exc: OSError) -> StoreError:
        return StoreError(
            f"pyro server cannot write its audit trail {self.path} ({exc.strerror or exc}); "
            "it refuses calls rather than run unaudited. Free disk space or fix the file's "
            "owner and mode, then retry"
        )


def read(
    path: Path, *, principal: str | None = None, since: float | None = None
) -> Iterator[dict[str, Any]]:
    """The records of ``path`` and its rotated files, oldest first (lines that do
    not parse are skipped: a crash may cut the last one)."""
    rotated = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)  # .4 is the oldest
    for file in [*rotated, path]:
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if principal is not None and entry.get("principal") != principal:
                continue
            if since is not None and _epoch(entry.get("time")) < since:
                continue
            yield entry


def parse_since(text: str) -> float:
    """``--since``: an ISO time (``2026-12-07T10:00``, UTC unless it says) or an age
    (``90s``, ``30m``, ``2h``, ``7d``); the epoch seconds it means.

    Raises:
        InvalidArgument: neither.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            "since", f"{text!r}: give an ISO time (2026-12-07T10:00) or an age (30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _epoch(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0
