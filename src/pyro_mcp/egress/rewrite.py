"""Replacing byte strings in a stream that arrives in pieces.

A value can be split across two pieces, so a stream rewriter holds back the
tail of each piece that could start one. The secret redactor (outputs shown
to people) and the egress proxy (answers going back to the guest) both do.
"""

from __future__ import annotations

from collections.abc import Iterable


def held_back(data: bytes, needles: Iterable[bytes]) -> int:
    """How many trailing bytes of ``data`` could begin one of ``needles``."""
    longest = 0
    for needle in needles:
        for size in range(min(len(needle) - 1, len(data)), longest, -1):
            if data.endswith(needle[:size]):
                longest = size
                break
    return longest


class StreamRewriter:
    """Replaces each ``old`` with its ``new`` in a stream fed piece by piece."""

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        # Longest first, so a value containing another is replaced whole.
        self._pairs = sorted((p for p in pairs if p[0]), key=lambda p: -len(p[0]))
        self._held = b""

    def active(self) -> bool:
        return bool(self._pairs)

    def replace(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            data = data.replace(old, new)
        return data

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` can go out now (the rest waits for the next piece or flush)."""
        if not self._pairs:
            return data
        data = self.replace(self._held + data)
        keep = held_back(data, (old for old, _ in self._pairs))
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held
