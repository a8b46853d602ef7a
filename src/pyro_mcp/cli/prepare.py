"""``pyro prepare``: the warm snapshot behind sub-second create and reset."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli import client
from pyro_mcp.cli.render import human_bytes, print_json, progress_printer

EPILOG = """\
examples:
  pyro prepare                    debian:12: build if needed, snapshot booted guests
                                  without and with a NIC (workspaces with egress)
  pyro prepare debian:12-build    another environment
  pyro prepare --no-network       only guests without a NIC
  pyro prepare --force            take new snapshots even if the current ones are valid
  pyro prepare --project-path .   the project's .devcontainer/devcontainer.json environment
                                  (image pulled, or Dockerfile built), then its snapshots

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
    parser.add_argument("environment", nargs="?", default=None)
    parser.add_argument(
        "--project-path",
        metavar="DIR",
        help="the environment DIR declares in .devcontainer/devcontainer.json (pulled or built)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="with --project-path and a Dockerfile: a host its RUN steps may reach",
    )
    parser.add_argument(
        "--allow-package-index",
        action="store_true",
        help="with --project-path and a Dockerfile: RUN steps may reach the package index",
    )
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
    from pyro_mcp.errors import InvalidArgument

    pyro = client.pyro(progress=progress_printer("prepare"))
    if args.project_path:
        if args.environment:
            raise InvalidArgument(
                "--project-path", "give an environment or --project-path, not both"
            )
        result = pyro.prepare_project(
            args.project_path,
            allow_hosts=args.allow_host,
            allow_package_index=args.allow_package_index,
            network=args.network,
            force=args.force,
        )
    else:
        if args.allow_host or args.allow_package_index:
            raise InvalidArgument("--allow-host", "goes with --project-path (a Dockerfile build)")
        environment = args.environment or config.DEFAULT_ENVIRONMENT
        result = pyro.prepare(environment, network=args.network, force=args.force)
    if args.json:
        print_json(result)
        return 0
    yes = {True: "yes", False: "no"}
    print(f"Prepare: {result['environment']}")
    print("Daily loop: WARM")
    print(
        f"Result: {'prepared' if result['prepared'] else 'not prepared'} "
        f"network_prepared={yes[result['network_prepared']]} reused={yes[result['reused']]}"
    )
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
