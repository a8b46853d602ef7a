"""``pyro workspace ...``: persistent workspaces (the SDK's ``*_workspace`` methods)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli import client, files, processes
from pyro_mcp.cli.render import (
    parse_pairs,
    print_json,
    progress_printer,
    table,
    write_command_output,
)
from pyro_mcp.cli.run import parse_env
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.render import render_journal_entry, render_summary

EPILOG = """\
examples:
  WS=$(pyro workspace create debian:12 --seed-path ./repo --name repro-fix \\
         --label issue=123 --id-only)
  pyro workspace list
  pyro workspace exec "$WS" -- make test
  pyro workspace logs "$WS"
  pyro workspace sync push "$WS" ./changes --dest src
  pyro workspace file list "$WS" src --recursive
  pyro workspace file read "$WS" src/app.py --content-only
  pyro workspace file write "$WS" notes.txt --text-file ./notes.txt
  pyro workspace patch apply "$WS" --patch-file fix.patch
  pyro workspace diff "$WS"
  pyro workspace export "$WS" src/app.py --output ./app.py
  pyro workspace summary "$WS"
  pyro workspace reset "$WS"
  pyro workspace update "$WS" --label owner=me --clear-label issue
  pyro workspace create debian:12 --network-policy egress \
      --allow-host pypi.example.org --allow-host '*.example.com' \
      --secret API_TOKEN=... --secret-host API_TOKEN=api.example.com
  pyro workspace update "$WS" --allow-host git.example.net:22 --deny-host old.example.org
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
    seed = create.add_mutually_exclusive_group()
    seed.add_argument("--seed-path", help="a directory or .tar/.tar.gz/.tgz to put in /workspace")
    seed.add_argument(
        "--project-path",
        help="a Git checkout: its tracked files go in /workspace and its .gitignore rules "
        "shape diff, summary and export (what `pyro mcp serve` in that checkout does)",
    )
    create.add_argument("--name")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--ttl-seconds", type=int, help="delete after this long without activity")
    create.add_argument("--max-lifetime-seconds", type=int, help="delete this long after creation")
    create.add_argument(
        "--idle-suspend-seconds",
        type=int,
        help="suspend after this long without a call; the next call resumes it "
        f"(default {config.DEFAULT_IDLE_SUSPEND_SECONDS}; 0: never)",
    )
    create.add_argument(
        "--idle-suspend-published",
        action="store_true",
        help="suspend when idle even while services publish ports (they stop answering "
        "until the next call resumes the workspace)",
    )
    create.add_argument(
        "--no-host-ca",
        action="store_true",
        help="with --network, do not install the host's CA bundle in the guest",
    )
    create.add_argument("--vcpu-count", type=int, default=config.DEFAULT_VCPU_COUNT)
    create.add_argument("--mem-mib", type=int, default=config.DEFAULT_MEM_MIB)
    create.add_argument(
        "--network", action="store_true", help="shorthand for --network-policy egress"
    )
    create.add_argument(
        "--network-policy",
        choices=["off", "egress", "egress+published-ports"],
        help="off: no NIC (default); egress: out through pyro's egress proxy; "
        "egress+published-ports: services may also publish ports",
    )
    add_host_rule_flags(create)
    create.add_argument(
        "--allow-package-index",
        action="store_true",
        help="with egress, also allow the hosts of this host's package index settings (pip, "
        "uv, npm); with no other --allow-host: the package index and nothing else",
    )
    create.add_argument(
        "--allow-private-egress",
        action="store_true",
        help="operator: let the guest reach loopback, link-local and private addresses",
    )
    create.add_argument(
        "--allow-host-services",
        action="store_true",
        help="operator: let --allow-host host.pyro.internal:PORT reach this host's 127.0.0.1:PORT",
    )
    create.add_argument(
        "--secret", action="append", default=[], metavar="NAME=VALUE", help="a secret (repeatable)"
    )
    create.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a secret read from a host file (repeatable)",
    )
    create.add_argument(
        "--secret-host",
        action="append",
        default=[],
        metavar="NAME=HOST",
        help="send secret NAME's real value only to HOST (repeatable); the guest sees a "
        "placeholder that the egress proxy swaps in requests to HOST",
    )
    create.add_argument("--id-only", action="store_true", help="print only the workspace id")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=handle_create)

    listing = sub.add_parser("list", help="every workspace, most recently active first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)

    update = sub.add_parser(
        "update",
        help="rename, change labels, the idle limit or the egress host rules",
        description="Change a workspace; --allow-host and --deny-host apply to the guest's "
        "next connections at once, running or not.",
    )
    update.add_argument("workspace")
    names = update.add_mutually_exclusive_group()
    names.add_argument("--name")
    names.add_argument("--clear-name", action="store_true", help="remove the workspace's name")
    update.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    update.add_argument("--clear-label", action="append", default=[], metavar="KEY")
    update.add_argument(
        "--idle-suspend-seconds", type=int, help="suspend after this long idle (0: never)"
    )
    update.add_argument(
        "--idle-suspend-published",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="suspend when idle even while services publish ports (--no-...: never then)",
    )
    add_host_rule_flags(update)
    update.add_argument("--json", action="store_true")
    update.set_defaults(handler=handle_update)

    for action, help_text in (
        ("status", "a workspace's state, seed and counts"),
        ("logs", "the command journal"),
        ("start", "boot a stopped workspace"),
        ("delete", "remove the workspace and its disks"),
    ):
        simple = sub.add_parser(action, help=help_text)
        simple.add_argument("workspace")
        simple.add_argument("--json", action="store_true")
        simple.set_defaults(handler=handle_simple, action=action)

    stop = sub.add_parser(
        "stop",
        help="suspend: save the memory, free the host's; start resumes every process",
        description="Suspend the workspace: its memory is saved next to its disks and the VM "
        "process exits; `pyro workspace start` resumes services, shells and /tmp as they "
        "were. --discard-memory stops it instead (disks kept, processes end).",
    )
    stop.add_argument("workspace")
    stop.add_argument("--discard-memory", action="store_true", help="stop instead of suspending")
    stop.add_argument("--json", action="store_true")
    stop.set_defaults(handler=handle_stop)

    fork = sub.add_parser(
        "fork",
        help="copy a running workspace, processes included, into new workspaces",
        description="Copy a running workspace as it is now (/workspace, root disk, memory, "
        "running services and shells) into COUNT new workspaces; the source pauses briefly "
        "and runs on. Example: `pyro workspace fork WS --name try --count 3` makes try-1, "
        "try-2 and try-3.",
    )
    fork.add_argument("workspace")
    fork.add_argument("--name", help="the fork's name (with --count: NAME-1, NAME-2, ...)")
    fork.add_argument("--count", type=int, default=1, help="how many forks (1 to 8)")
    fork.add_argument("--json", action="store_true")
    fork.set_defaults(handler=handle_fork)

    diff = sub.add_parser(
        "diff",
        help="changes against the create-time baseline",
        description="Changes against the create-time baseline. Example: "
        "`pyro workspace diff WS --patch > fix.patch && git apply --check fix.patch`",
    )
    diff.add_argument("workspace")
    diff.add_argument(
        "--patch",
        action="store_true",
        help="print only a patch that `git apply` takes (binary files as Git binary patches)",
    )
    diff.add_argument("--include-ignored", action="store_true", help=files.INCLUDE_IGNORED_HELP)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(handler=handle_diff)
    summary = sub.add_parser("summary", help="what ran and changed since the last reset")
    summary.add_argument("workspace")
    summary.add_argument("--include-ignored", action="store_true", help=files.INCLUDE_IGNORED_HELP)
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(handler=handle_summary)

    reset = sub.add_parser("reset", help="recreate the sandbox from the baseline or a snapshot")
    reset.add_argument("workspace")
    reset.add_argument("--snapshot", help="a snapshot name (default: baseline)")
    reset.add_argument("--json", action="store_true")
    reset.set_defaults(handler=handle_reset)

    forward = sub.add_parser(
        "port-forward",
        help="carry a published port of a remote workspace to 127.0.0.1 here",
        description="With --remote (PYRO_REMOTE): listen on 127.0.0.1:LOCAL_PORT here and "
        "carry each connection, through the authenticated connection to the server, to the "
        "port a service of WS publishes GUEST_PORT on (on the server's loopback). Runs until "
        "interrupted. Locally a published port is already on 127.0.0.1: it is printed.",
    )
    forward.add_argument("workspace")
    forward.add_argument("guest_port", type=int)
    forward.add_argument("--local-port", type=int, default=0, help="default: any free port")
    forward.add_argument("--json", action="store_true", help="print {local_port, url} once ready")
    forward.set_defaults(handler=handle_port_forward)

    files.register(sub)

    processes.register(sub)
    processes.register_snapshots(sub)
    processes.register_disk(sub)

    execute = sub.add_parser("exec", help="run a command in /workspace")
    execute.add_argument("workspace")
    execute.add_argument("--timeout-seconds", type=float, default=config.DEFAULT_TIMEOUT_SECONDS)
    execute.add_argument("--cwd", help="a directory relative to /workspace")
    execute.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    execute.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="NAME[:ENV_VAR]",
        help="put a workspace secret in the environment (repeatable)",
    )
    execute.add_argument("--json", action="store_true")
    execute.add_argument("cmd", nargs="*", help="the command and its arguments, after --")
    execute.set_defaults(handler=handle_exec)


def add_host_rule_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-host",
        action="append",
        default=None,
        metavar="HOST",
        help="with egress, the guest reaches only these hosts: name, *.name, either with "
        ":PORT (repeatable)",
    )
    parser.add_argument(
        "--deny-host",
        action="append",
        default=[],
        metavar="HOST",
        help="refuse this host even if it is allowed (repeatable)",
    )


def _secrets_with_hosts(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """--secret/--secret-file values, as {"value"/"path": ..., "hosts": [...]} when bound."""
    literal: dict[str, Any] = dict(parse_pairs(args.secret, "--secret", secret=True))
    files: dict[str, Any] = dict(parse_pairs(args.secret_file, "--secret-file"))
    hosts: dict[str, list[str]] = {}
    for pair in args.secret_host:
        name, sep, host = pair.partition("=")
        if not sep or not name or not host:
            raise InvalidArgument("--secret-host", f"{pair!r} is not NAME=HOST")
        hosts.setdefault(name, []).append(host)
    for name, bound in hosts.items():
        if name in literal:
            literal[name] = {"value": literal[name], "hosts": bound}
        elif name in files:
            files[name] = {"path": files[name], "hosts": bound}
        else:
            raise InvalidArgument(
                "--secret-host", f"no --secret or --secret-file called {name!r} to bind"
            )
    return literal, files


def handle_port_forward(args: argparse.Namespace) -> int:
    remote = client.remote()

    def ready(port: int) -> None:
        shown = {"workspace": args.workspace, "guest_port": args.guest_port, "local_port": port}
        if args.json:
            print(json.dumps({**shown, "url": f"http://127.0.0.1:{port}"}), flush=True)
        else:
            print(
                f"forwarding 127.0.0.1:{port} -> {args.workspace} port {args.guest_port} "
                "(Ctrl-C to stop)",
                flush=True,
            )

    if remote is None:
        pyro = client.pyro()
        for service in pyro.list_services(args.workspace)["services"]:
            for port in service.get("published_ports", []):
                if port["guest_port"] == args.guest_port:
                    ready(int(port["host_port"]))  # already here: nothing to carry
                    return 0
        raise InvalidArgument(
            "guest_port", f"no service of {args.workspace} publishes guest port {args.guest_port}"
        )
    try:
        remote.forward_port(
            args.workspace, args.guest_port, local_port=args.local_port, ready=ready
        )
    except KeyboardInterrupt:
        return 0
    return 0


def handle_create(args: argparse.Namespace) -> int:
    secrets, secret_files = _secrets_with_hosts(args)
    workspace = client.pyro(progress=progress_printer("workspace")).create_workspace(
        args.environment,
        seed_path=args.seed_path,
        project_path=args.project_path,
        name=args.name,
        labels=parse_labels(args.label),
        ttl_seconds=args.ttl_seconds,
        max_lifetime_seconds=args.max_lifetime_seconds,
        idle_suspend_seconds=args.idle_suspend_seconds,
        idle_suspend_published=args.idle_suspend_published,
        host_ca=not args.no_host_ca,
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        network=args.network,
        network_policy=args.network_policy,
        secrets=secrets,
        secret_files=secret_files,
        allow_hosts=args.allow_host,
        allow_package_index=args.allow_package_index,
        deny_hosts=args.deny_host,
        allow_private_egress=args.allow_private_egress,
        allow_host_services=args.allow_host_services,
    )
    if args.id_only:
        print(workspace["workspace_id"])
    elif args.json:
        print_json(workspace)
    else:
        print(_describe(workspace))
    return 0


def handle_list(args: argparse.Namespace) -> int:
    listed = client.pyro().list_workspaces()
    workspaces = listed["workspaces"]
    if args.json:
        print_json(listed)
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
    workspace = client.pyro().update_workspace(
        args.workspace,
        name=args.name,
        clear_name=args.clear_name,
        labels=parse_labels(args.label),
        clear_labels=args.clear_label,
        idle_suspend_seconds=args.idle_suspend_seconds,
        idle_suspend_published=args.idle_suspend_published,
        allow_hosts=args.allow_host or (),
        deny_hosts=args.deny_host,
    )
    print_json(workspace) if args.json else print(_describe(workspace))
    return 0


def handle_simple(args: argparse.Namespace) -> int:
    pyro = client.pyro(progress=progress_printer("workspace"))
    method = {
        "status": pyro.status_workspace,
        "logs": pyro.logs_workspace,
        "start": pyro.start_workspace,
        "delete": pyro.delete_workspace,
    }[args.action]
    result = method(args.workspace)
    if args.json:
        print_json(result)
    elif args.action == "logs":
        for entry in result["entries"]:
            print(render_journal_entry(entry))
    elif args.action == "delete":
        print(f"deleted {result['workspace_id']}")
    else:
        print(_describe(result))
    return 0


def handle_fork(args: argparse.Namespace) -> int:
    result = client.pyro().fork_workspace(args.workspace, name=args.name, count=args.count)
    if args.json:
        print_json(result)
        return 0
    print(
        f"forked {result['workspace_id']} into {len(result['forks'])} workspace(s) in "
        f"{result['fork_ms']} ms (source paused {result['pause_ms']} ms)"
    )
    for fork in result["forks"]:
        print(f"  {fork['workspace_id']}  {fork['name'] or '-'}  {fork['state']}")
    return 0


def handle_stop(args: argparse.Namespace) -> int:
    result = client.pyro().stop_workspace(args.workspace, discard_memory=args.discard_memory)
    if args.json:
        print_json(result)
    elif result["suspended"]:
        print(
            f"suspended {result['workspace_id']} in {result['suspend_ms']} ms "
            f"({result['memory_bytes'] // 2**20} MiB of memory saved; `pyro workspace start` "
            "resumes it)"
        )
    else:
        print(_describe(result))
    return 0


def handle_diff(args: argparse.Namespace) -> int:
    result = client.pyro().diff_workspace(
        args.workspace,
        include_ignored=args.include_ignored,
        format="patch" if args.patch else "changes",
    )
    if args.json:
        print_json(result)
        return 0
    if args.patch:
        sys.stdout.write(result["patch"])
    else:
        sys.stdout.write(result["patch"] if result["changed"] else "no changes\n")
        for change in result["changes"]:
            if change["status"] != "modified" or change["binary"]:
                print(f"# {change['status']}: {change['path']}", file=sys.stderr)
    if result["ignored_count"]:
        print(
            f"# {result['ignored_count']} path(s) the project ignores left out "
            "(--include-ignored shows them)",
            file=sys.stderr,
        )
    if result["patch_truncated"]:
        print("# the patch was cut at its size bound", file=sys.stderr)
    return 0


def handle_summary(args: argparse.Namespace) -> int:
    result = client.pyro().summarize_workspace(args.workspace, include_ignored=args.include_ignored)
    print_json(result) if args.json else print(render_summary(result))
    return 0


def handle_exec(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise InvalidArgument("command", "give the command after --")
    result = client.pyro().exec_workspace(
        args.workspace,
        list(args.cmd),
        timeout_seconds=args.timeout_seconds,
        cwd=args.cwd,
        env=parse_env(args.env),
        secret_env=args.secret_env,
    )
    if args.json:
        print_json(result)
    else:
        write_command_output(result, "workspace", args.timeout_seconds)
    return int(result["exit_code"])


def parse_labels(pairs: list[str]) -> dict[str, str]:
    return parse_pairs(pairs, "--label")


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
    egress = workspace.get("egress")
    if egress:
        lines.append(f"  network    {workspace['network_policy']}: {describe_egress(egress)}")
        for name, bound in egress["secrets"].items():
            lines.append(f"  secret     {name} -> {', '.join(bound['hosts'])} (guest: placeholder)")
    if workspace.get("boot_kind") and workspace["state"] == "running":
        lines.append(f"  boot       {workspace['boot_kind']}, {workspace['boot_ms']} ms")
    if workspace.get("boot_warning"):
        lines.append(f"  warning    {workspace['boot_warning']}")
    if workspace.get("last_error"):
        lines.append(f"  last error {workspace['last_error']}")
    return "\n".join(lines)


def describe_egress(egress: dict[str, Any]) -> str:
    """``only a, b; deny c; private egress allowed`` for the status lines."""
    parts = [
        "any public host"
        if egress["allow_hosts"] is None
        else "only " + (", ".join(egress["allow_hosts"]) or "(no host)")
    ]
    if egress["deny_hosts"]:
        parts.append("deny " + ", ".join(egress["deny_hosts"]))
    if egress["allow_private_egress"]:
        parts.append("private addresses allowed")
    if egress["allow_host_services"]:
        parts.append("host services allowed")
    return "; ".join(parts)


def _ago(timestamp: float) -> str:
    seconds = int(time.time() - timestamp)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def handle_reset(args: argparse.Namespace) -> int:
    workspace = client.pyro(progress=progress_printer("workspace")).reset_workspace(
        args.workspace, snapshot=args.snapshot
    )
    print_json(workspace) if args.json else print(_describe(workspace))
    return 0
