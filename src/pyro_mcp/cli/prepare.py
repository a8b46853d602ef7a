"""``pyro prepare``: the warm snapshot behind sub-second create and reset."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli.render import human_bytes, print_json, progress_printer
from pyro_mcp.sdk import Pyro

EPILOG = """\
examples:
  pyro prepare                    debian:12: build if needed, snapshot booted guests
                                  without and with a NIC (workspaces with egress)
  pyro prepare debian:12-build    another environment
  pyro prepare --no-network       only guests without a NIC
  pyro prepare --force            take new snapshots even if the current ones are valid

Afterwards workspace create, reset and `pyro run` restore the snapshot instead
of booting. `pyro doctor` says whether the daily loop is warm, cold or stale;
PYRO_WARM=0 forces cold boots. Progress goes to stderr.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "prepare",
        help="take the warm snapshot that makes create and reset sub-second",
        description="Build the environment if needed, boot one guest, save a warm memory "
        "snapshot of it with the agent ready, prove a create/exec/reset/delete loop from it, "
        "and record it. Run again while nothing changed, it answers 'already warm' at once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("environment", nargs="?", default=config.DEFAULT_ENVIRONMENT)
    parser.add_argument(
        "--network",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also prepare guests with a NIC, for workspaces with egress (default: on)",
    )
    parser.add_argument("--force", action="store_true", help="take new snapshots regardless")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    pyro = Pyro(progress=progress_printer("prepare"))
    result = pyro.prepare(args.environment, network=args.network, force=args.force)
    if args.json:
        print_json(result)
        return 0
    state = "already warm" if result["already_warm"] else "warm"
    print(f"{result['environment']} is {state} (accel={result['accel']}, {result['seconds']} s)")
    for snapshot in result["snapshots"]:
        proof = snapshot.get("proof") or {}
        nic = "with NIC" if snapshot["network"] else "no NIC"
        print(
            f"  {nic:<9} {snapshot['status']:<13} {human_bytes(snapshot['bytes'] or 0):>10}  "
            f"proof: create {proof.get('create_ms', '-')} ms, reset {proof.get('reset_ms', '-')} ms"
        )
        print(f"            {snapshot['path']}")
    return 0
