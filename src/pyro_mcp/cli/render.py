"""Output helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces.replies import shown


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def progress_printer(tag: str) -> Any:
    """A progress callback printing ``[tag] message`` lines to stderr.

    On a terminal, a byte count (``phase=fetch 12.3 of 81.0 MiB``) rewrites
    one live line instead of adding lines; elsewhere it prints one line every
    few seconds at most.
    """
    live = sys.stderr.isatty()
    state = {"open": False, "last": 0.0}

    def progress(message: str) -> None:
        counting = message.startswith("phase=fetch ") and message.endswith(" MiB")
        if counting and live:
            sys.stderr.write(f"\r[{tag}] {message}\x1b[K")
            state["open"] = True
        elif counting and time.monotonic() - state["last"] < PLAIN_COUNT_SECONDS:
            return
        else:
            if state["open"]:
                sys.stderr.write("\n")
                state["open"] = False
            sys.stderr.write(f"[{tag}] {message}\n")
        if counting:
            state["last"] = time.monotonic()
        sys.stderr.flush()

    return progress


PLAIN_COUNT_SECONDS = 5.0


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def write_command_output(result: dict[str, Any], tag: str, timeout_seconds: float) -> None:
    """A guest command's output on ours: stdout to stdout, stderr to stderr, then notes."""
    sys.stdout.write(result["stdout"])
    sys.stdout.flush()
    sys.stderr.write(result["stderr"])
    if result["truncated"]:
        sys.stderr.write(f"[{tag}] output truncated to 1 MiB per stream\n")
    if result["timed_out"]:
        sys.stderr.write(f"[{tag}] timed out after {timeout_seconds:g} s; the command was killed\n")


def parse_pairs(pairs: list[str], flag: str, *, secret: bool = False) -> dict[str, str]:
    """``NAME=VALUE`` flags as a dict; a malformed one names the flag (never a secret value)."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            shown = "a value" if secret else repr(pair)
            raise InvalidArgument(flag, f"{shown} is not NAME=VALUE")
        values[key] = value
    return values


def print_listing(entries: list[dict[str, Any]]) -> None:
    """File entries as ``mode size path`` lines (directories end in /)."""
    for entry in entries:
        suffix = "/" if entry["artifact_type"] == "directory" else ""
        target = f" -> {entry['link_target']}" if entry.get("link_target") else ""
        path = shown(entry["path"])
        print(f"{entry['mode']:04o} {entry['size_bytes']:>10}  {path}{suffix}{target}")
