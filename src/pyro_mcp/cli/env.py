"""``pyro env list|pull|inspect|prune``."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli.render import human_bytes, print_json, progress_printer, table
from pyro_mcp.sdk import Pyro

EPILOG = """\
examples:
  pyro env list
  pyro env pull debian:12          build it (about a minute), or verify and repair it
  pyro env pull debian:12 --force  rebuild from scratch
  pyro env inspect debian:12 --json
  pyro env prune                   drop interrupted/superseded builds and download caches
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "env",
        help="list, build, inspect and prune environments",
        description="Environments are guest images built locally from Debian packages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="the catalog and what is installed")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)

    pull = sub.add_parser("pull", help="build an environment, or verify and repair it")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="rebuild even if it verifies")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=handle_pull)

    inspect = sub.add_parser("inspect", help="catalog entry, status and build manifest")
    inspect.add_argument("name")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=handle_inspect)

    prune = sub.add_parser("prune", help="remove leftovers and caches (builds in use are kept)")
    prune.add_argument("--all", action="store_true", help="also remove installed environments")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(handler=handle_prune)


def handle_list(args: argparse.Namespace) -> int:
    environments = Pyro().list_environments()
    if args.json:
        print_json(environments)
        return 0
    rows = [
        [
            env["name"],
            "installed" if env["installed"] else ("broken" if env["problem"] else "not installed"),
            human_bytes(env["size_bytes"]) if env["installed"] else "-",
            env["description"],
        ]
        for env in environments
    ]
    print(table(rows, ["NAME", "STATE", "SIZE", "DESCRIPTION"]))
    return 0


def handle_pull(args: argparse.Namespace) -> int:
    info = Pyro(progress=progress_printer("env")).pull_environment(args.name, force=args.force)
    if args.json:
        print_json(info)
    else:
        print(
            f"{info['name']}: installed ({human_bytes(info['size_bytes'])}, "
            f"kernel {info['kernel']}) at {info['path']}"
        )
    return 0


def handle_inspect(args: argparse.Namespace) -> int:
    info = Pyro().inspect_environment(args.name)
    if args.json:
        print_json(info)
        return 0
    manifest = info.get("manifest") or {}
    state = (
        "installed"
        if info["installed"]
        else f"not installed{' (' + info['problem'] + ')' if info['problem'] else ''}"
    )
    print(f"{info['name']}: {info['description']}")
    print(f"  state       {state}")
    print(f"  packages    {', '.join(info['catalog_packages'])}")
    print(f"  disk        {info['disk_size_mib']} MiB (sparse)")
    if manifest:
        print(f"  built       {manifest['built_at']} in {manifest['build_seconds']} s")
        print(f"  kernel      {manifest['kernel']['package']} {manifest['kernel']['version']}")
        print(
            f"  installed   {len(manifest.get('packages', {}))} Debian packages, "
            f"{human_bytes(info['size_bytes'])} on disk"
        )
        print(f"  path        {info['path']}")
    return 0


def handle_prune(args: argparse.Namespace) -> int:
    result = Pyro().prune_environments(all=args.all)
    if args.json:
        print_json(result)
    else:
        print(
            f"removed {len(result['removed'])} item(s), freed {human_bytes(result['freed_bytes'])}"
        )
        for path in result["removed"]:
            print(f"  {path}")
    return 0
