"""The human rendering of a workspace summary (shared by the CLI and MCP)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def render_summary(summary: dict[str, Any]) -> str:
    lines = [f"workspace {summary['name'] or summary['workspace_id']} ({summary['state']})"]
    commands = summary["commands"]
    lines.append(f"commands: {len(commands)} run, {summary['failed_commands']} failed")
    for command in commands[-10:]:
        lines.append(f"  [{command['exit_code']}] {command['command']}")
    for kind, entries in summary["operations"].items():
        if entries:
            lines.append(f"{kind}: {len(entries)}")
    crossings = summary.get("host_crossings") or []
    if crossings:
        lines.append("host crossings:")
        for crossing in crossings:
            if crossing["kind"] == "seed":
                origin = f"{crossing.get('origin_kind')} {crossing.get('origin_ref', '')}"
                lines.append(f"  seed from {origin}".rstrip())
            elif crossing["kind"] == "secret_use":
                names = ", ".join(crossing.get("names", []))
                lines.append(f"  secrets {names} used by {crossing.get('by')}")
            elif crossing["kind"] == "sync":
                lines.append(
                    f"  sync {crossing.get('source')} -> /workspace/{crossing.get('dest')}"
                )
            elif crossing["kind"] == "egress":
                lines.append("  " + _egress_line(crossing))
            elif crossing["kind"] == "egress_policy":
                lines.append("  egress rules " + _rule_change(crossing))
            else:
                lines.append(
                    f"  export /workspace/{crossing.get('path')} -> {crossing.get('output')}"
                )
    services = (summary.get("services") or {}).get("events") or []
    for event in services[-10:]:
        lines.append(f"service {event.get('name')} {event.get('action')}: {event.get('state')}")
    snapshots = summary.get("snapshots") or {}
    for event in (snapshots.get("events") or [])[-10:]:
        lines.append(f"snapshot {event.get('name')} {event.get('action')}")
    if summary["changes"].get("available"):
        files = summary["changes"]["files"]
        lines.append(f"files changed: {len(files)}")
        for change in files[:20]:
            lines.append(f"  {change['status']:<9} {change['path']}")
        if len(files) > 20:
            lines.append(f"  ... and {len(files) - 20} more")
        if summary["changes"].get("ignored_count"):
            lines.append(
                f"  ({summary['changes']['ignored_count']} path(s) the project ignores left out)"
            )
    elif summary["note"]:
        lines.append(summary["note"])
    if summary.get("warning"):
        lines.append(f"warning: {summary['warning']}")
    return "\n".join(lines)


def render_journal_entry(entry: dict[str, Any]) -> str:
    """One journal line: commands with exit code and duration, other events by kind."""
    when = time.strftime("%H:%M:%S", time.localtime(entry["started_at"]))
    kind = entry["kind"]
    if kind == "exec":
        return (
            f"{when}  exit={entry['exit_code']:<3} {entry['duration_ms']:>6} ms  "
            f"{entry['cwd']}$ {entry['command']}"
        )
    details: dict[str, Callable[[dict[str, Any]], str]] = {
        "seed": lambda e: f"files from {e.get('origin_kind')} {e.get('origin_ref', '')}".rstrip(),
        "write": lambda e: f"wrote {e.get('path')} ({e.get('bytes')} bytes)",
        "patch": lambda e: "patched " + ", ".join(f["path"] for f in e.get("files", [])),
        "sync": lambda e: f"pushed {e.get('source')} to /workspace/{e.get('dest')}",
        "export": lambda e: f"exported /workspace/{e.get('path')} to {e.get('output')}",
        "reset": lambda e: f"reset to {e.get('to', 'baseline')}",
        "secret_use": lambda e: f"secrets {', '.join(e.get('names', []))} used by {e.get('by')}",
        "service": lambda e: f"service {e.get('name')} {e.get('action')}: {e.get('state')}",
        "snapshot": lambda e: f"snapshot {e.get('name')} {e.get('action')}",
        "suspend": lambda e: f"suspended ({e.get('memory_bytes', 0) // 2**20} MiB saved)",
        "resume": lambda e: f"resumed in {e.get('resume_ms')} ms",
        "egress": _egress_line,
        "egress_policy": _rule_change,
    }
    describe = details.get(kind)
    return f"{when}  {kind:<8} {describe(entry) if describe else kind}"


def _egress_line(entry: dict[str, Any]) -> str:
    """``out  host:443 allowed, 3 connections, 12 KiB out / 3 MiB in, secrets TOKEN``."""
    target = f"{entry.get('host')}:{entry.get('port')}" if entry.get("port") else entry.get("host")
    count = entry.get("connections")
    parts = [f"out {target}", "allowed" if entry.get("allowed") else "DENIED"]
    if count:
        parts.append(f"{count} connection(s)")
    if entry.get("allowed") and "bytes_sent" in entry:
        parts.append(f"{entry['bytes_sent']} B out / {entry.get('bytes_received', 0)} B in")
    if entry.get("secrets"):
        parts.append("secrets " + ", ".join(entry["secrets"]))
    if not entry.get("allowed") and entry.get("reason"):
        parts.append(str(entry["reason"]))
    return " ".join(parts[:2]) + (": " + ", ".join(parts[2:]) if parts[2:] else "")


def _rule_change(entry: dict[str, Any]) -> str:
    allow = ", ".join(entry.get("allow_hosts") or []) or "-"
    deny = ", ".join(entry.get("deny_hosts") or []) or "-"
    return f"changed: allow {allow}; deny {deny}"
