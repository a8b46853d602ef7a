"""``pyro vm ...``: the lower-level VM lifecycle (the SDK's ``*_vm`` methods)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli import client
from pyro_mcp.cli.render import print_json, progress_printer, table, write_command_output
from pyro_mcp.cli.run import parse_env
from pyro_mcp.errors import InvalidArgument

EPILOG = """\
examples:
  VM=$(pyro vm create debian:12 --id-only)
  pyro vm start "$VM"
  pyro vm exec "$VM" -- sh -c 'echo hello > /root/x; cat /root/x'
  pyro vm stop "$VM"; pyro vm start "$VM"     # the root disk is kept
  pyro vm status "$VM" --json
  pyro vm delete "$VM"
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "vm",
        help="lower-level VM lifecycle: create, start, exec, stop, delete",
        description="Raw VMs that persist across pyro calls until deleted or expired.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="vm_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="record a VM with its own disk (does not boot)")
    create.add_argument("environment", nargs="?", default=config.DEFAULT_ENVIRONMENT)
    create.add_argument("--vcpu-count", type=int, default=config.DEFAULT_VCPU_COUNT)
    create.add_argument("--mem-mib", type=int, default=config.DEFAULT_MEM_MIB)
    create.add_argument("--network", action="store_true")
    create.add_argument("--ttl-seconds", type=int, default=None)
    create.add_argument("--id-only", action="store_true", help="print only the VM id")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=handle_create)

    for name, help_text in (
        ("start", "boot a created or stopped VM"),
        ("stop", "stop a VM, keeping its disk"),
        ("delete", "stop a VM and remove everything it had"),
        ("status", "a VM's record, reconciled with reality"),
    ):
        action = sub.add_parser(name, help=help_text)
        action.add_argument("vm_id")
        action.add_argument("--json", action="store_true")
        action.set_defaults(handler=handle_simple, action=name)

    execute = sub.add_parser(
        "exec",
        help="run one command in a running VM, then delete the VM (--keep-vm keeps it)",
        description="Run one command in a running VM, then delete the VM (pyro-mcp 4.5's "
        "contract); --keep-vm keeps it for more commands.",
        epilog="example: pyro vm exec VM_ID --keep-vm -- uname -a",
    )
    execute.add_argument("vm_id")
    execute.add_argument(
        "--keep-vm", action="store_true", help="keep the VM running after the command"
    )
    execute.add_argument("--timeout-seconds", type=float, default=config.DEFAULT_TIMEOUT_SECONDS)
    execute.add_argument("--cwd", default=None)
    execute.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    execute.add_argument("--json", action="store_true")
    execute.add_argument("cmd", nargs="*", help="the command and its arguments, after --")
    execute.set_defaults(handler=handle_exec)

    listing = sub.add_parser("list", help="every VM")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)

    reap = sub.add_parser("reap", help="delete expired VMs and orphaned one-shot VMs")
    reap.add_argument("--json", action="store_true")
    reap.set_defaults(handler=handle_reap)


def handle_create(args: argparse.Namespace) -> int:
    record = client.pyro(progress=progress_printer("vm")).create_vm(
        args.environment,
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        network=args.network,
        ttl_seconds=args.ttl_seconds,
    )
    if args.id_only:
        print(record["vm_id"])
    elif args.json:
        print_json(record)
    else:
        print(
            f"created {record['vm_id']} ({record['environment']}); "
            f"boot it with `pyro vm start {record['vm_id']}`"
        )
    return 0


def handle_simple(args: argparse.Namespace) -> int:
    pyro = client.pyro(progress=progress_printer("vm"))
    method = {
        "start": pyro.start_vm,
        "stop": pyro.stop_vm,
        "delete": pyro.delete_vm,
        "status": pyro.status_vm,
    }
    result = method[args.action](args.vm_id)
    if args.json:
        print_json(result)
    elif args.action == "delete":
        print(f"deleted {args.vm_id}")
    else:
        print(_describe(result))
    return 0


def handle_exec(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if not command:
        raise InvalidArgument("command", "give the command after --")
    result = client.pyro().exec_vm(
        args.vm_id,
        command,
        timeout_seconds=args.timeout_seconds,
        env=parse_env(args.env),
        cwd=args.cwd,
        keep_vm=args.keep_vm,
    )
    if args.json:
        print_json(result)
    else:
        write_command_output(result, "vm", args.timeout_seconds)
    return int(result["exit_code"])


def handle_list(args: argparse.Namespace) -> int:
    records = client.pyro().list_vms()
    if args.json:
        print_json(records)
        return 0
    rows = [
        [r["vm_id"], r["environment"], r["state"], r["accel"] or "-", _age(r["created_at"])]
        for r in records
    ]
    print(table(rows, ["VM", "ENVIRONMENT", "STATE", "ACCEL", "CREATED"]) if rows else "no VMs")
    return 0


def handle_reap(args: argparse.Namespace) -> int:
    result = client.pyro().reap_expired()
    if args.json:
        print_json(result)
    else:
        print(f"reaped {len(result['reaped'])} VM(s)")
    return 0


def _describe(record: dict[str, Any]) -> str:
    accel = record["accel"] or "-"
    line = f"{record['vm_id']} {record['state']} ({record['environment']}, accel={accel})"
    if record.get("boot_kind") and record["state"] == "running":
        line += f"\n  boot: {record['boot_kind']}, {record['boot_ms']} ms"
    if record.get("boot_warning"):
        line += f"\n  warning: {record['boot_warning']}"
    if record.get("last_error"):
        line += f"\n  last error: {record['last_error']}"
    return line


def _age(timestamp: float) -> str:
    seconds = int(time.time() - timestamp)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"
