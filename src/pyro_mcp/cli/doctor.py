"""``pyro doctor``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli import client
from pyro_mcp.cli.render import print_json
from pyro_mcp.environments.catalog import CATALOG_VERSION


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check that this host can run guests",
        description="Report platform, KVM/TCG choice, QEMU, host tools, cache and environments. "
        "Exits 1 when this host cannot run guests.",
    )
    parser.add_argument(
        "--environment",
        default=config.DEFAULT_ENVIRONMENT,
        help="whose daily loop (warm, cold or stale) to report (default: %(default)s)",
    )
    parser.add_argument(
        "--platform",
        action="store_true",
        help="only the host: platform, KVM/TCG, QEMU, host tools, networking, free space "
        "(no environments or daily loop; answers without looking at the cache)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    report = client.pyro().doctor(environment=args.environment, platform_only=args.platform)
    if not args.platform:
        report["project_source"] = project_source()
    if args.json:
        print_json(report)
        return 0 if report["ok"] else 1
    platform = report["platform"]
    accel = report["accel"]
    qemu = report["qemu"]
    _print_summary(report)
    print(f"pyro doctor: {'OK' if report['ok'] else 'CANNOT RUN GUESTS'}")
    if server := report.get("server"):  # through `pyro --remote URL`
        remote = client.remote()
        print(f"  server       {remote.url if remote else ''} as {server['principal']}")
        print(
            f"  isolation    warm snapshots {server['warm_snapshots']}; guest memory "
            f"merging {server['guest_memory_merge']}"
        )
    root = " (root)" if platform["root"] else ""
    print(
        f"  platform     {platform['distribution']} {platform['machine']}, "
        f"kernel {platform['release']}, Python {platform['python']}{root}"
    )
    kvm = "present" if accel["kvm_present"] else "absent"
    usable = {True: "usable", False: "not usable", None: "not yet probed"}[accel["kvm_usable"]]
    print(f"  kvm          {kvm}, {usable}")
    print(f"  accel        {accel['accel']}: {accel['reason']}")
    print(f"  qemu         {qemu['version'] or 'missing'} ({qemu['path'] or 'not installed'})")
    nat = "available" if report["networking"]["user_mode_nat"] else "unavailable"
    print(f"  networking   user-mode networking {nat} (egress through pyro's proxy)")
    merging = report["memory_merge"]
    print(
        f"  memory       same-page merging {merging['state']}"
        + (
            f": {merging['folded_mib']:.0f} MiB of freed guest memory given back, "
            f"{merging['merged_mib']:.0f} MiB merged"
            if merging["state"] == "on"
            else ""
        )
    )
    missing = [t for t in report["host_tools"] if not t["found"]]
    print(
        f"  host tools   {len(report['host_tools']) - len(missing)}/"
        f"{len(report['host_tools'])} found"
        + (
            ": missing " + ", ".join(f"{t['command']} ({t['package']})" for t in missing)
            if missing
            else ""
        )
    )
    print(f"  state dir    {report['state_dir']}")
    print(f"  cache dir    {report['cache_dir']}")
    for env in report.get("environments", []):
        state = (
            "installed"
            if env["installed"]
            else (f"broken: {env['problem']}" if env["problem"] else "not installed")
        )
        print(f"  environment  {env['name']:<16} {state}")
    if "daily_loop" in report:  # not with --platform
        _print_workspaces(report)
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}")
    for warning in report["warnings"]:
        print(f"  note: {warning}")
    return 0 if report["ok"] else 1


def project_source() -> dict[str, Any]:
    """What ``pyro mcp serve`` started here (no flags) would seed workspaces from,
    and each place it looked, in order."""
    from pyro_mcp.workspaces import project_source as sources

    cwd = Path.cwd()
    root = sources.git_toplevel(cwd)
    tried = [
        "--project-path: not given",
        "--repo-url: not given",
        f"the Git checkout around {cwd}: " + (str(root) if root else "none"),
    ]
    if root is None:
        return {"origin_kind": "none", "origin_ref": "", "tried": tried}
    return {"origin_kind": "project_path", "origin_ref": str(root), "tried": tried}


def _print_summary(report: dict[str, Any]) -> None:
    """pyro-mcp 4.5's summary lines, ahead of the details."""
    yes = {True: "yes", False: "no"}
    kvm = report["kvm"]
    print(f"Runtime: {'PASS' if report['runtime_ok'] else 'FAIL'}")
    print(
        f"KVM: exists={yes[kvm['exists']]} readable={yes[kvm['readable']]} "
        f"writable={yes[kvm['writable']]}"
    )
    nat = "available" if report["networking"]["user_mode_nat"] else "unavailable"
    print(f"Networking: user-mode networking {nat} (egress through pyro's proxy)")
    loop = report.get("daily_loop")
    if loop is not None:
        print(f"Daily loop: {loop['status'].upper()} ({loop['environment']})")
        if loop.get("fix"):
            print(f"Run: {loop['fix']}")
    source = report.get("project_source")
    if source is not None:
        seeds = f"{source['origin_kind']} {source['origin_ref']}".strip()
        print(f"Project source: {seeds} (tried: {'; '.join(source['tried'])})")
    platform = report["platform"]
    print(f"Platform: {platform['system'].lower()}-{platform['machine']}")
    print(f"Environment cache: {report['cache_dir']}")
    print(f"Catalog version: {CATALOG_VERSION}")
    runs = report["runtime_ok"]
    print(
        f"Capabilities: vm_boot={yes[runs]} guest_exec={yes[runs]} "
        f"guest_network={yes[runs and report['networking']['user_mode_nat']]}"
    )


def _print_workspaces(report: dict[str, Any]) -> None:
    loop = report["daily_loop"]
    detail = f"snapshot of {loop['prepared_at']}" if loop["status"] == "warm" else loop["reason"]
    if not loop.get("warm_enabled", True):
        detail += " (PYRO_WARM=0: every start cold-boots)"
    print(f"  daily loop   {loop['environment']}: {loop['status']}, {detail}")
    if "network" in loop:
        network = loop["network"]
        said = (
            "warm" if network["status"] == "warm" else f"{network['status']}, {network['reason']}"
        )
        print(f"               with a NIC (egress): {said}")
    if loop.get("fix"):
        print(f"  next         {loop['fix']}")
    room = report["capacity"]
    print(
        f"  capacity     {room['running']} running, {room['suspended']} suspended (no memory "
        f"held); room for {room['room_for']} more running (cap {room['max_running']}, "
        "PYRO_MAX_RUNNING)"
    )
