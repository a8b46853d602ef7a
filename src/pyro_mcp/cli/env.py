"""``pyro env list|pull|build|save|push|inspect|rm|prune``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyro_mcp.cli import client
from pyro_mcp.cli.render import human_bytes, print_json, progress_printer, table

EPILOG = """\
examples:
  pyro env list
  pyro env pull debian:12          build it (about a minute) and take its warm snapshots
  pyro env pull debian:12 --no-prepare   ... without the warm snapshots
  pyro env pull debian:12 --force  rebuild from scratch
  pyro env pull registry.example.org/team/node:22   any OCI image, no root needed
  pyro env build app:1 --file Dockerfile . --allow-package-index
  pyro env push node:22 oci-archive:./node-22.tar
  pyro env inspect debian:12 --json
  pyro env rm node:22              remove one environment (and layers only it used)
  pyro env prune                   drop interrupted/superseded builds and download caches
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "env",
        help="list, build or pull, push, inspect, remove and prune environments",
        description=(
            "Environments are what guests boot: curated ones built locally from Debian "
            "packages, or any OCI image pulled from a registry or an archive."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="the catalog and what is installed")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)

    pull = sub.add_parser(
        "pull",
        help="build a curated environment, or install one from an OCI image",
        description=(
            "REF is a curated name (debian:12) or an image: a registry reference "
            "(registry.example.org/team/node:22, docker://..., tag or @sha256: digest), "
            "oci:PATH[:TAG] (an OCI layout), oci-archive:FILE, or docker-archive:FILE "
            "(what `docker save` writes). Layers are fetched once and shared."
        ),
        epilog=(
            "examples:\n"
            "  pyro env pull debian:12\n"
            "  pyro env pull registry.example.org/team/node:22\n"
            "  pyro env pull oci-archive:./tool.tar --name tool:1\n"
            "  pyro env pull 127.0.0.1:5000/app:latest --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("reference", metavar="REF")
    pull.add_argument("--name", help="the environment's name (default: from REF, e.g. node:22)")
    pull.add_argument("--force", action="store_true", help="rebuild even if it verifies")
    pull.add_argument(
        "--insecure-registry",
        action="store_true",
        help="allow a plain-HTTP registry that is not on a loopback address",
    )
    pull.add_argument(
        "--disk-size-mib",
        type=int,
        default=None,
        help="root disk size for an image environment (sparse; default 8192)",
    )
    pull.add_argument(
        "--no-prepare",
        action="store_true",
        help="skip taking its warm snapshots (its first workspace then boots cold)",
    )
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=handle_pull)

    build = sub.add_parser(
        "build",
        help="build an environment from a Dockerfile, inside a guest",
        description=(
            "Build NAME from a Dockerfile inside a pyro guest: FROM (an installed "
            "environment or any REF `env pull` takes), RUN, COPY and ADD of files from "
            "CONTEXT (.dockerignore honoured), ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, "
            "ENTRYPOINT and CMD (recorded, not run). RUN steps have no network unless "
            "--allow-host or --allow-package-index let them out through the egress "
            "proxy. Each step is cached: a rebuild runs from the first step that changed."
        ),
        epilog=(
            "examples:\n"
            "  pyro env build app:1                      ./Dockerfile, context .\n"
            "  pyro env build app:1 --file ci/Dockerfile ./service --build-arg VERSION=2\n"
            "  pyro env build tools:1 --allow-host mirror.example.org --allow-package-index\n"
            "  pyro env build app:1 --no-cache --step-timeout 600 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("name")
    build.add_argument("context", nargs="?", default=".", metavar="CONTEXT")
    build.add_argument("--file", "-f", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    build.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a host RUN steps may reach (name, *.name, either with :port); repeatable",
    )
    build.add_argument(
        "--allow-package-index",
        action="store_true",
        help="let RUN steps reach this host's package indexes (pip, npm, apt's Debian mirror)",
    )
    build.add_argument(
        "--build-arg", action="append", default=[], metavar="K=V", help="set an ARG; repeatable"
    )
    build.add_argument("--no-cache", action="store_true", help="run every step again")
    build.add_argument(
        "--step-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="stop a step (and its guest) after this long (default 1800)",
    )
    build.add_argument(
        "--no-prepare",
        action="store_true",
        help="skip taking its warm snapshots (its first workspace then boots cold)",
    )
    build.add_argument("--json", action="store_true")
    build.set_defaults(handler=handle_build)

    save = sub.add_parser(
        "save",
        help="save a workspace's root filesystem as an environment",
        description=(
            "Save WORKSPACE's root filesystem as it is now (packages, toolchains, caches "
            "outside /workspace) as environment NAME; new workspaces start from it. "
            "/workspace is not part of it. A running workspace pauses for milliseconds "
            "and runs on."
        ),
        epilog=(
            "examples:\n"
            "  pyro env save ws-1a2b3c4d5e6f node-tools:1\n"
            "  pyro env save my-workspace app:2 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    save.add_argument("workspace", metavar="WORKSPACE")
    save.add_argument("name", metavar="NAME")
    save.add_argument(
        "--no-prepare",
        action="store_true",
        help="skip taking its warm snapshots (its first workspace then boots cold)",
    )
    save.add_argument("--json", action="store_true")
    save.set_defaults(handler=handle_save)

    push = sub.add_parser(
        "push",
        help="write an installed environment to a registry or an OCI layout",
        description=(
            "Write NAME (curated or pulled) to REF as an OCI image: a registry "
            "(HOST/PATH:TAG, docker://...), oci:PATH[:TAG] or oci-archive:FILE. "
            "`pyro env pull REF` elsewhere gives the same manifest digest."
        ),
        epilog=(
            "examples:\n"
            "  pyro env push debian:12 registry.example.org/pyro/debian:12\n"
            "  pyro env push node:22 oci-archive:./node-22.tar --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("name")
    push.add_argument("reference", metavar="REF")
    push.add_argument(
        "--insecure-registry",
        action="store_true",
        help="allow a plain-HTTP registry that is not on a loopback address",
    )
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=handle_push)
    inspect = sub.add_parser("inspect", help="catalog entry, status and build manifest")
    inspect.add_argument("name")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=handle_inspect)

    remove = sub.add_parser(
        "rm",
        help="remove installed environments",
        description=(
            "Remove each NAME: its builds, its warm snapshots and the layer disks no other "
            "environment shares. Refused, naming them, while workspaces or VMs use it; "
            "--force deletes those first. A curated environment can be pulled again."
        ),
        epilog=(
            "examples:\n"
            "  pyro env rm node:22\n"
            "  pyro env rm app:1 app:2 --json\n"
            "  pyro env rm debian:12-build --force     also deletes the workspaces using it"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.add_argument(
        "--force",
        action="store_true",
        help="delete the workspaces and VMs that use it first (they are named as they go)",
    )
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(handler=handle_remove)

    prune = sub.add_parser("prune", help="remove leftovers and caches (builds in use are kept)")
    prune.add_argument("--all", action="store_true", help="also remove installed environments")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(handler=handle_prune)


def handle_list(args: argparse.Namespace) -> int:
    environments = client.pyro().list_environments()
    if args.json:
        print_json(environments)
        return 0
    rows = [
        [
            env["name"],
            "installed" if env["installed"] else ("broken" if env["problem"] else "not installed"),
            human_bytes(env["size_bytes"] + env.get("layers_bytes", 0))
            if env["installed"]
            else "-",
            _shared(env),
            env["description"],
        ]
        for env in environments
    ]
    from pyro_mcp.environments.catalog import CATALOG_VERSION

    print(f"Catalog version: {CATALOG_VERSION}")
    print(table(rows, ["NAME", "STATE", "SIZE", "SHARED", "DESCRIPTION"]))
    return 0


def _shared(env: dict[str, Any]) -> str:
    """What of an environment's layers other environments use too."""
    if not env.get("shared_layers"):
        return "-"
    return f"{human_bytes(env['shared_bytes'])} with {', '.join(env['shared_with'])}"


def handle_pull(args: argparse.Namespace) -> int:
    progress = progress_printer("pull")
    progress(f"phase=install environment={args.name or args.reference}")
    info = client.pyro(progress=progress).pull_environment(
        args.reference,
        name=args.name,
        force=args.force,
        insecure_registry=args.insecure_registry,
        disk_size_mib=args.disk_size_mib,
        prepare=not args.no_prepare,
    )
    if args.json:
        print_json(info)
    else:
        # pyro-mcp 4.5's lines first, then pyro's.
        print(f"Pulled: {info['name']}")
        origin = f", from {info['source']}" if info.get("source") else ""
        warm = "warm" if info.get("prepare") else "not prepared"
        print(
            f"{info['name']}: installed ({human_bytes(info['size_bytes'])}, "
            f"kernel {info['kernel']}{origin}, {warm}) at {info['path']}"
        )
    return 0


def handle_build(args: argparse.Namespace) -> int:
    from pyro_mcp.errors import InvalidArgument
    from pyro_mcp.vm.env_build import STEP_TIMEOUT_SECONDS

    build_args = {}
    for item in args.build_arg:
        key, has_value, value = item.partition("=")
        if not key or not has_value:
            raise InvalidArgument("--build-arg", f"expected K=V, not {item!r}")
        build_args[key] = value
    info = client.pyro(progress=progress_printer("build")).build_environment(
        args.name,
        file=args.file,
        context=args.context,
        build_args=build_args,
        allow_hosts=args.allow_host,
        allow_package_index=args.allow_package_index,
        no_cache=args.no_cache,
        step_timeout_seconds=args.step_timeout or STEP_TIMEOUT_SECONDS,
        prepare=not args.no_prepare,
    )
    if args.json:
        print_json(info)
    else:
        size = human_bytes(info.get("layers_bytes", 0))
        print(f"{info['name']}: built in {info['seconds']} s ({size} of layers) at {info['path']}")
    return 0


def handle_save(args: argparse.Namespace) -> int:
    info = client.pyro(progress=progress_printer("env")).save_environment(
        args.workspace, args.name, prepare=not args.no_prepare
    )
    if args.json:
        print_json(info)
    else:
        print(
            f"{info['name']}: saved from {args.workspace} in {info['save_seconds']} s "
            f"(paused {info['pause_ms']} ms) at {info['path']}"
        )
    return 0


def handle_push(args: argparse.Namespace) -> int:
    result = client.pyro(progress=progress_printer("env")).push_environment(
        args.name, args.reference, insecure_registry=args.insecure_registry
    )
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']}: pushed to {result['reference']} ({result['manifest_digest']})")
    return 0


def handle_inspect(args: argparse.Namespace) -> int:
    info = client.pyro().inspect_environment(args.name)
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
    print(f"  kind        {info['kind']}")
    if info["kind"] == "image":
        image = info.get("image") or {}
        settings = image.get("settings") or {}
        print(f"  source      {image.get('reference')}")
        print(f"  digest      {image.get('manifest_digest')}")
        count, size = len(image.get("layers") or []), human_bytes(info.get("layers_bytes", 0))
        print(f"  layers      {count}, {size} on disk")
        for layer in info.get("layer_disks") or []:
            sharing = (
                f", shared with {', '.join(layer['shared_with'])}" if layer["shared_with"] else ""
            )
            print(f"    {Path(layer['disk']).stem[:12]}  {human_bytes(layer['bytes'])}{sharing}")
        print(f"  user        {settings.get('user') or 'root'}")
        print(f"  workdir     {settings.get('working_dir') or '-'}")
        print(f"  entrypoint  {settings.get('entrypoint') or '-'} (not run)")
        print(f"  cmd         {settings.get('cmd') or '-'} (not run)")
        for key, value in sorted((settings.get("env") or {}).items()):
            print(f"  env         {key}={value}")
        print(f"  disk        {info['disk_size_mib']} MiB (sparse)")
        print(f"  path        {info['path']}")
        return 0
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


def handle_remove(args: argparse.Namespace) -> int:
    pyro = client.pyro(progress=progress_printer("env"))
    results = []
    for name in args.names:
        result = pyro.remove_environment(name, force=args.force)
        results.append(result)
        if not args.json:
            deleted = [*result["deleted_workspaces"], *result["deleted_vms"]]
            also = f"; deleted {', '.join(deleted)}" if deleted else ""
            print(f"{name}: removed, freed {human_bytes(result['freed_bytes'])}{also}")
    if args.json:
        print_json({"count": len(results), "environments": results})
    return 0


def handle_prune(args: argparse.Namespace) -> int:
    result = client.pyro().prune_environments(all=args.all)
    if args.json:
        print_json(result)
    else:
        print(
            f"removed {len(result['removed'])} item(s), freed {human_bytes(result['freed_bytes'])}"
        )
        for path in result["removed"]:
            print(f"  {path}")
    return 0
