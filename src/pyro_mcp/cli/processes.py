"""``pyro workspace shell ...`` and ``pyro workspace service ...``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyro_mcp.cli import client
from pyro_mcp.cli.render import print_json, print_listing, table
from pyro_mcp.cli.run import parse_env
from pyro_mcp.errors import InvalidArgument

SHELL_EPILOG = """\
examples:
  SH=$(pyro workspace shell open "$WS" --cwd src --cols 120 --rows 40 --id-only)
  pyro workspace shell write "$WS" "$SH" --input 'python3 -i'
  pyro workspace shell read "$WS" "$SH" --plain --wait-for-idle-ms 300
  pyro workspace shell read "$WS" "$SH" --cursor 1234      # resume after the last read
  pyro workspace shell signal "$WS" "$SH" --signal INT
  pyro workspace shell close "$WS" "$SH"
"""

SERVICE_EPILOG = """\
examples:
  pyro workspace service start "$WS" web --cwd app --ready-http http://127.0.0.1:8000/ \\
      --publish 8000 -- python3 -m http.server 8000
  pyro workspace service start "$WS" worker --ready-file .ready -- sh -c './worker'
  pyro workspace service list "$WS"
  pyro workspace service logs "$WS" web --tail-lines 50
  pyro workspace service stop "$WS" web

--publish needs a workspace created with --network-policy egress+published-ports;
published ports listen on 127.0.0.1 of this host only.
"""


def register(sub: Any) -> None:
    shell = sub.add_parser(
        "shell",
        help="interactive PTY shells in the workspace",
        epilog=SHELL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shells = shell.add_subparsers(dest="shell_command", metavar="ACTION", required=True)
    opened = shells.add_parser("open", help="open a bash on a real PTY")
    opened.add_argument("workspace")
    opened.add_argument("--cwd", help="relative to /workspace")
    opened.add_argument("--cols", type=int, default=120)
    opened.add_argument("--rows", type=int, default=40)
    opened.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    opened.add_argument("--secret-env", action="append", default=[], metavar="NAME[:ENV_VAR]")
    opened.add_argument("--id-only", action="store_true")
    opened.add_argument("--json", action="store_true")
    opened.set_defaults(handler=handle_shell_open)

    write = shells.add_parser("write", help="type input (Enter appended)")
    write.add_argument("workspace")
    write.add_argument("shell_id")
    write.add_argument("--input", required=True)
    write.add_argument("--no-newline", action="store_true", help="do not press Enter")
    write.add_argument("--json", action="store_true")
    write.set_defaults(handler=handle_shell_write)

    read = shells.add_parser("read", help="output since a cursor")
    read.add_argument("workspace")
    read.add_argument("shell_id")
    read.add_argument(
        "--cursor", type=int, help="from this cursor (default: all output still kept)"
    )
    read.add_argument("--plain", action="store_true", help="strip ANSI, apply CR/backspace")
    read.add_argument("--wait-for-idle-ms", type=int, help="return once output was quiet this long")
    read.add_argument("--max-wait-ms", type=int, default=10000)
    read.add_argument("--max-chars", type=int, default=65536)
    read.add_argument("--json", action="store_true")
    read.set_defaults(handler=handle_shell_read)

    signal = shells.add_parser("signal", help="send a signal to the foreground process")
    signal.add_argument("workspace")
    signal.add_argument("shell_id")
    signal.add_argument("--signal", default="INT", choices=["INT", "TERM", "KILL", "HUP", "QUIT"])
    signal.add_argument("--json", action="store_true")
    signal.set_defaults(handler=handle_shell_signal)

    for action, help_text in (("close", "end the shell"), ("list", "the workspace's shells")):
        simple = shells.add_parser(action, help=help_text)
        simple.add_argument("workspace")
        if action == "close":
            simple.add_argument("shell_id")
        simple.add_argument("--json", action="store_true")
        simple.set_defaults(handler=handle_shell_simple, action=action)

    service = sub.add_parser(
        "service",
        help="named long-running processes with readiness",
        epilog=SERVICE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    services = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    start = services.add_parser("start", help="start a service and wait until it is ready")
    start.add_argument("workspace")
    start.add_argument("name")
    start.add_argument("--cwd", help="relative to /workspace")
    start.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    start.add_argument("--secret-env", action="append", default=[], metavar="NAME[:ENV_VAR]")
    ready = start.add_mutually_exclusive_group()
    ready.add_argument("--ready-file", help="ready when this file exists (relative to --cwd)")
    ready.add_argument(
        "--ready-tcp", metavar="HOST:PORT", help="ready when this accepts connections"
    )
    ready.add_argument("--ready-http", metavar="URL", help="ready when this answers 2xx/3xx")
    ready.add_argument("--ready-command", metavar="CMD", help="ready when this exits 0")
    start.add_argument("--ready-timeout-seconds", type=float, default=60.0)
    start.add_argument(
        "--ready-interval-ms", type=int, default=200, help="how often to check (default 200)"
    )
    start.add_argument("--publish", action="append", default=[], metavar="[HOST_PORT:]GUEST_PORT")
    start.add_argument("--json", action="store_true")
    start.add_argument("cmd", nargs="*", help="the command, after --")
    start.set_defaults(handler=handle_service_start)

    for action, help_text in (
        ("list", "every service"),
        ("status", "one service"),
        ("logs", "a service's output"),
        ("stop", "stop a service"),
    ):
        simple = services.add_parser(action, help=help_text)
        simple.add_argument("workspace")
        if action != "list":
            simple.add_argument("name")
        if action == "logs":
            simple.add_argument("--tail-lines", type=int, default=200)
            simple.add_argument("--all", action="store_true", help="the whole kept log")
        simple.add_argument("--json", action="store_true")
        simple.set_defaults(handler=handle_service_simple, action=action)


SNAPSHOT_EPILOG = """\
examples:
  pyro workspace snapshot create "$WS" checkpoint
  pyro workspace snapshot list "$WS"
  pyro workspace reset "$WS" --snapshot checkpoint
  pyro workspace snapshot delete "$WS" checkpoint
"""


def register_snapshots(sub: Any) -> None:
    snapshot = sub.add_parser(
        "snapshot",
        help="named checkpoints of /workspace",
        epilog=SNAPSHOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    snapshots = snapshot.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    for action, help_text in (
        ("create", "capture /workspace now (consistent even while running)"),
        ("list", "baseline and the named snapshots"),
        ("delete", "delete a named snapshot"),
    ):
        parser = snapshots.add_parser(action, help=help_text)
        parser.add_argument("workspace")
        if action != "list":
            parser.add_argument("name")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=handle_snapshot, action=action)


def register_disk(sub: Any) -> None:
    disk = sub.add_parser(
        "disk",
        help="read a stopped workspace's disk offline",
        epilog='examples:\n  pyro workspace stop "$WS"\n'
        '  pyro workspace disk list "$WS" src --recursive\n'
        '  pyro workspace disk read "$WS" src/app.py --content-only\n'
        '  pyro workspace disk export "$WS" --output ws.ext4\n',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = disk.add_subparsers(dest="disk_command", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="/workspace as a raw ext4 image")
    export.add_argument("workspace")
    export.add_argument("--output", required=True)
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=handle_disk, action="export")
    listing = actions.add_parser("list", help="entries under a path")
    listing.add_argument("workspace")
    listing.add_argument("path", nargs="?", default=".")
    listing.add_argument("--recursive", action="store_true")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_disk, action="list")
    read = actions.add_parser("read", help="a file's content")
    read.add_argument("workspace")
    read.add_argument("path")
    read.add_argument("--max-bytes", type=int, default=65536)
    read.add_argument("--content-only", action="store_true")
    read.add_argument("--json", action="store_true")
    read.set_defaults(handler=handle_disk, action="read")


def handle_disk(args: argparse.Namespace) -> int:
    pyro = client.pyro()
    if args.action == "export":
        result = pyro.export_workspace_disk(args.workspace, args.output, overwrite=args.overwrite)
        print_json(result) if args.json else print(
            f"wrote {result['output_path']} ({result['disk_format']})"
        )
    elif args.action == "list":
        result = pyro.list_workspace_disk(args.workspace, args.path, recursive=args.recursive)
        if args.json:
            print_json(result)
        else:
            print_listing(result["entries"])
    else:
        result = pyro.read_workspace_disk(args.workspace, args.path, max_bytes=args.max_bytes)
        if args.json:
            print_json(result)
        elif result["binary"]:
            print(f"{result['path']}: binary file, {result['size_bytes']} bytes")
        else:
            sys.stdout.write(result["content"])
    return 0


def handle_snapshot(args: argparse.Namespace) -> int:
    pyro = client.pyro()
    if args.action == "list":
        result = pyro.list_snapshots(args.workspace)
        if args.json:
            print_json(result)
        else:
            rows = [
                [s["name"], f"{s['bytes']}", "reserved" if s["reserved"] else ""]
                for s in result["snapshots"]
            ]
            print(table(rows, ["SNAPSHOT", "BYTES", ""]))
        return 0
    method = pyro.create_snapshot if args.action == "create" else pyro.delete_snapshot
    result = method(args.workspace, args.name)
    print_json(result) if args.json else print(f"{args.action}d snapshot {args.name}")
    return 0


def handle_shell_open(args: argparse.Namespace) -> int:
    shell = client.pyro().open_shell(
        args.workspace,
        cwd=args.cwd,
        cols=args.cols,
        rows=args.rows,
        env=parse_env(args.env),
        secret_env=args.secret_env,
    )
    if args.id_only:
        print(shell["shell_id"])
    else:
        print_json(shell) if args.json else print(f"opened shell {shell['shell_id']}")
    return 0


def handle_shell_write(args: argparse.Namespace) -> int:
    result = client.pyro().write_shell(
        args.workspace, args.shell_id, args.input, newline=not args.no_newline
    )
    print_json(result) if args.json else None
    return 0


def handle_shell_read(args: argparse.Namespace) -> int:
    result = client.pyro().read_shell(
        args.workspace,
        args.shell_id,
        cursor=args.cursor,
        plain=args.plain,
        wait_for_idle_ms=args.wait_for_idle_ms,
        max_wait_ms=args.max_wait_ms,
        max_chars=args.max_chars,
    )
    if args.json:
        print_json(result)
        return 0
    sys.stdout.write(result["output"])
    sys.stdout.flush()
    note = f"[shell] next_cursor={result['next_cursor']}"
    if result["missed_bytes"]:
        note += f" (missed {result['missed_bytes']} bytes that left the buffer)"
    if result["closed"]:
        note += f" closed exit_code={result['exit_code']}"
    print(note, file=sys.stderr)
    return 0


def handle_shell_signal(args: argparse.Namespace) -> int:
    result = client.pyro().signal_shell(args.workspace, args.shell_id, args.signal)
    print_json(result) if args.json else None
    return 0


def handle_shell_simple(args: argparse.Namespace) -> int:
    pyro = client.pyro()
    if args.action == "close":
        result = pyro.close_shell(args.workspace, args.shell_id)
        print_json(result) if args.json else print(f"closed shell {args.shell_id}")
        return 0
    result = pyro.list_shells(args.workspace)
    if args.json:
        print_json(result)
    else:
        rows = [
            [s["shell_id"], "closed" if s["closed"] else "open", str(s["cursor"])]
            for s in result["shells"]
        ]
        print(table(rows, ["SHELL", "STATE", "CURSOR"]) if rows else "no shells")
    return 0


def handle_service_start(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise InvalidArgument("command", "give the service's command after --")
    status = client.pyro().start_service(
        args.workspace,
        args.name,
        list(args.cmd),
        cwd=args.cwd,
        env=parse_env(args.env),
        ready_file=args.ready_file,
        ready_tcp=args.ready_tcp,
        ready_http=args.ready_http,
        ready_command=args.ready_command,
        ready_timeout_seconds=args.ready_timeout_seconds,
        ready_interval_ms=args.ready_interval_ms,
        published_ports=args.publish,
        secret_env=args.secret_env,
    )
    if args.json:
        print_json(status)
    else:
        print(_describe(status))
    return 0 if status["state"] == "running" else 1


def handle_service_simple(args: argparse.Namespace) -> int:
    pyro = client.pyro()
    if args.action == "list":
        result = pyro.list_services(args.workspace)
        if args.json:
            print_json(result)
        else:
            rows = [
                [
                    s["name"],
                    s["state"],
                    str(s["exit_code"] if s["exit_code"] is not None else "-"),
                    ",".join(f"{p['host_port']}->{p['guest_port']}" for p in s["published_ports"])
                    or "-",
                ]
                for s in result["services"]
            ]
            print(table(rows, ["SERVICE", "STATE", "EXIT", "PUBLISHED"]) if rows else "no services")
        return 0
    if args.action == "logs":
        result = pyro.logs_service(
            args.workspace, args.name, tail_lines=args.tail_lines, all=args.all
        )
        print_json(result) if args.json else sys.stdout.write(result["stdout"])
        return 0
    method = pyro.status_service if args.action == "status" else pyro.stop_service
    status = method(args.workspace, args.name)
    print_json(status) if args.json else print(_describe(status))
    return 0


def _describe(status: dict[str, Any]) -> str:
    line = f"service {status['name']}: {status['state']}"
    if status["exit_code"] is not None:
        line += f" (exit code {status['exit_code']})"
    if status["reason"]:
        line += f": {status['reason']}"
    for port in status.get("published_ports", []):
        address = f"http://{port['host']}:{port['host_port']}"
        line += f"\n  published {address} -> guest port {port['guest_port']}"
    return line
