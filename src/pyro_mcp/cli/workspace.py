"""``pyro workspace ...``: persistent workspaces (the SDK's ``*_workspace`` methods)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli.render import print_json, progress_printer, table, write_command_output
from pyro_mcp.cli.run import parse_env
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.sdk import Pyro

EPILOG = """\
examples:
  WS=$(pyro workspace create debian:12 --seed-path ./repo --name repro-fix \\
         --label issue=123 --id-only)
  pyro workspace list
  pyro workspace exec "$WS" -- make test
  pyro workspace logs "$WS"
  pyro workspace update "$WS" --label owner=me --clear-label issue
  pyro workspace stop "$WS"; pyro workspace start "$WS"
  pyro workspace delete "$WS"

A workspace is named by its id or its name.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "workspace",
        help="persistent workspaces: seed, exec, logs, stop/start, delete",
        description="A microVM with /workspace on its own disk, used across many calls.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="workspace_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create and boot a workspace")
    create.add_argument("environment", nargs="?", default=config.DEFAULT_ENVIRONMENT)
    create.add_argument("--seed-path", help="a directory or .tar/.tar.gz/.tgz to put in /workspace")
    create.add_argument("--name")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--ttl-seconds", type=int)
    create.add_argument("--vcpu-count", type=int, default=config.DEFAULT_VCPU_COUNT)
    create.add_argument("--mem-mib", type=int, default=config.DEFAULT_MEM_MIB)
    create.add_argument("--network", action="store_true")
    create.add_argument("--id-only", action="store_true", help="print only the workspace id")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=handle_create)

    listing = sub.add_parser("list", help="every workspace, most recently active first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)

    update = sub.add_parser("update", help="rename or change labels")
    update.add_argument("workspace")
    update.add_argument("--name")
    update.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    update.add_argument("--clear-label", action="append", default=[], metavar="KEY")
    update.add_argument("--json", action="store_true")
    update.set_defaults(handler=handle_update)

    for action, help_text in (
        ("status", "a workspace's state, seed and counts"),
        ("logs", "the command journal"),
        ("stop", "stop the VM, keeping the disks"),
        ("start", "boot a stopped workspace"),
        ("delete", "remove the workspace and its disks"),
    ):
        simple = sub.add_parser(action, help=help_text)
        simple.add_argument("workspace")
        simple.add_argument("--json", action="store_true")
        simple.set_defaults(handler=handle_simple, action=action)

    execute = sub.add_parser("exec", help="run a command in /workspace")
    execute.add_argument("workspace")
    execute.add_argument("--timeout-seconds", type=float, default=config.DEFAULT_TIMEOUT_SECONDS)
    execute.add_argument("--cwd", help="a directory relative to /workspace")
    execute.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    execute.add_argument("--json", action="store_true")
    execute.add_argument("cmd", nargs="*", help="the command and its arguments, after --")
    execute.set_defaults(handler=handle_exec)


def handle_create(args: argparse.Namespace) -> int:
    workspace = Pyro(progress=progress_printer("workspace")).create_workspace(
        args.environment,
        seed_path=args.seed_path,
        name=args.name,
        labels=parse_labels(args.label),
        ttl_seconds=args.ttl_seconds,
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        network=args.network,
    )
    if args.id_only:
        print(workspace["workspace_id"])
    elif args.json:
        print_json(workspace)
    else:
        print(_describe(workspace))
    return 0


def handle_list(args: argparse.Namespace) -> int:
    workspaces = Pyro().list_workspaces()
    if args.json:
        print_json(workspaces)
        return 0
    rows = [
        [
            w["workspace_id"],
            w["name"] or "-",
            w["state"],
            ",".join(f"{k}={v}" for k, v in w["labels"].items()) or "-",
            _ago(w["last_activity_at"]),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(w["expires_at"]))
            if w["expires_at"]
            else "never",
        ]
        for w in workspaces
    ]
    headers = ["WORKSPACE", "NAME", "STATE", "LABELS", "ACTIVE", "EXPIRES"]
    print(table(rows, headers) if rows else "no workspaces")
    return 0


def handle_update(args: argparse.Namespace) -> int:
    workspace = Pyro().update_workspace(
        args.workspace,
        name=args.name,
        labels=parse_labels(args.label),
        clear_labels=args.clear_label,
    )
    print_json(workspace) if args.json else print(_describe(workspace))
    return 0


def handle_simple(args: argparse.Namespace) -> int:
    pyro = Pyro(progress=progress_printer("workspace"))
    method = {
        "status": pyro.status_workspace,
        "logs": pyro.logs_workspace,
        "stop": pyro.stop_workspace,
        "start": pyro.start_workspace,
        "delete": pyro.delete_workspace,
    }[args.action]
    result = method(args.workspace)
    if args.json:
        print_json(result)
    elif args.action == "logs":
        for entry in result["entries"]:
            when = time.strftime("%H:%M:%S", time.localtime(entry["started_at"]))
            print(
                f"{when}  exit={entry['exit_code']:<3} {entry['duration_ms']:>6} ms  "
                f"{entry['cwd']}$ {entry['command']}"
            )
    elif args.action == "delete":
        print(f"deleted {result['workspace_id']}")
    else:
        print(_describe(result))
    return 0


def handle_exec(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise InvalidArgument("command", "give the command after --")
    result = Pyro().exec_workspace(
        args.workspace,
        list(args.cmd),
        timeout_seconds=args.timeout_seconds,
        cwd=args.cwd,
        env=parse_env(args.env),
    )
    if args.json:
        print_json(result)
    else:
        write_command_output(result, "workspace", args.timeout_seconds)
    return int(result["exit_code"])


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument("--label", f"{pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _describe(workspace: dict[str, Any]) -> str:
    seed = workspace["seed"]
    lines = [
        f"{workspace['workspace_id']} {workspace['state']} ({workspace['environment']}, "
        f"accel={workspace['accel'] or '-'})",
        f"  name       {workspace['name'] or '-'}",
        f"  labels     {', '.join(f'{k}={v}' for k, v in workspace['labels'].items()) or '-'}",
        f"  seed       {seed['kind']} {seed['source'] or ''} "
        f"({seed['file_count']} files, {seed['bytes']} bytes)",
        f"  commands   {workspace['command_count']}",
    ]
    if workspace.get("last_error"):
        lines.append(f"  last error {workspace['last_error']}")
    return "\n".join(lines)


def _ago(timestamp: float) -> str:
    seconds = int(time.time() - timestamp)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"
