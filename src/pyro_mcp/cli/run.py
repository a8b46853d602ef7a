"""``pyro run`` and ``pyro demo``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli import client
from pyro_mcp.cli.render import parse_pairs, print_json, progress_printer, write_command_output
from pyro_mcp.errors import InvalidArgument

RUN_EPILOG = """\
examples:
  pyro run debian:12 -- git --version
  pyro run debian:12 --json -- sh -c 'echo out; echo err >&2; exit 3'
  pyro run debian:12-build --timeout-seconds 120 -- make -C /tmp/x
  pyro run debian:12 --network -- cat /etc/resolv.conf

The command's stdout and stderr go to ours and its exit code becomes ours
(124 when it timed out). Progress phases go to stderr as `[run] phase=...`.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run one command in a fresh microVM, then delete it",
        description="Boot a fresh microVM, run one command in it, delete it.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "environment", help="environment name, e.g. debian:12 (see `pyro env list`)"
    )
    parser.add_argument("--vcpu-count", type=int, default=config.DEFAULT_VCPU_COUNT)
    parser.add_argument("--mem-mib", type=int, default=config.DEFAULT_MEM_MIB)
    parser.add_argument("--timeout-seconds", type=float, default=config.DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument(
        "--ttl-seconds",
        type=int,
        help="delete the VM after this long whatever happens (more than --timeout-seconds)",
    )
    parser.add_argument(
        "--network", action="store_true", help="give the guest NAT egress (default: no NIC)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("cmd", nargs="*", help="the command and its arguments, after --")
    parser.set_defaults(handler=handle_run)

    demo = commands.add_parser(
        "demo",
        help="prove create/start/exec/delete end to end",
        description="Create a VM, start it, run commands in it, delete it; print what happened.",
    )
    demo.add_argument("--environment", default=config.DEFAULT_ENVIRONMENT)
    demo.add_argument(
        "--network",
        action="store_true",
        help="give the demo VM a NIC (egress through pyro's proxy)",
    )
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(handler=handle_demo)


def handle_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if not command:
        raise InvalidArgument(
            "command", "give the command after --, e.g. `pyro run debian:12 -- uname -a`"
        )
    pyro = client.pyro(progress=progress_printer("run"))
    result = pyro.run_in_vm(
        args.environment,
        command,
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        timeout_seconds=args.timeout_seconds,
        ttl_seconds=args.ttl_seconds,
        network=args.network,
        env=parse_env(args.env),
    )
    if args.json:
        print_json(result)
    else:
        write_command_output(result, "run", args.timeout_seconds)
        # pyro-mcp 4.5's fields first, then pyro's boot figures.
        print(
            f"[run] environment={args.environment} execution_mode={result['execution_mode']} "
            f"exit_code={result['exit_code']} duration_ms={result['duration_ms']} "
            f"accel={result['accel']} boot_kind={result['boot_kind']} "
            f"boot_ms={result['boot_ms']} total_ms={result['total_ms']}",
            file=sys.stderr,
        )
        if result.get("boot_warning"):
            print(f"[run] warning: {result['boot_warning']}", file=sys.stderr)
    return int(result["exit_code"])


def parse_env(pairs: list[str]) -> dict[str, str]:
    return parse_pairs(pairs, "--env")


# What the demo's last exec runs (pyro-mcp 4.5's demo command); the VM goes with it.
DEMO_COMMAND = "git --version"


def handle_demo(args: argparse.Namespace) -> int:
    progress = progress_printer("demo")
    pyro = client.pyro(progress=progress)
    steps: list[dict[str, Any]] = []

    def step(name: str, started: float, **extra: Any) -> None:
        entry = {"step": name, "ms": int((time.monotonic() - started) * 1000), **extra}
        steps.append(entry)
        progress(f"step={name} ms={entry['ms']}")

    started = time.monotonic()
    vm = pyro.create_vm(args.environment, network=args.network)
    step("create", started, vm_id=vm["vm_id"])
    result: dict[str, Any] | None = None
    try:
        started = time.monotonic()
        vm = pyro.start_vm(vm["vm_id"])
        step("start", started, accel=vm["accel"], boot_kind=vm["boot_kind"], boot_ms=vm["boot_ms"])
        outputs = {}
        commands = ["uname -sr", "cat /etc/debian_version"]
        if args.network:
            # The NIC and its route to the egress proxy, without contacting any site.
            commands.append(
                """awk '$2 == "00000000" {print "default route via " $1}' /proc/net/route"""
            )
        # The last command's exec deletes the VM (exec_vm's contract).
        commands.append(DEMO_COMMAND)
        for command in commands:
            started = time.monotonic()
            last = command == commands[-1]
            result = pyro.exec_vm(vm["vm_id"], command, keep_vm=not last)
            outputs[command] = result["stdout"].strip()
            step("exec", started, command=command, exit_code=result["exit_code"])
    finally:
        if result is None or not result["cleanup"]["deleted"]:
            started = time.monotonic()
            pyro.delete_vm(vm["vm_id"])
            step("delete", started)
    assert result is not None  # the loop ran to its end, or raised
    ok = all(s.get("exit_code", 0) == 0 for s in steps)
    report = {
        "ok": ok,
        "environment": args.environment,
        "accel": vm.get("accel"),
        "boot_kind": vm.get("boot_kind"),
        "vm_id": vm["vm_id"],
        "outputs": outputs,
        "steps": steps,
        # pyro-mcp 4.5's demo fields: its one command and what became of the VM.
        "command": DEMO_COMMAND,
        "exit_code": result["exit_code"],
        "stdout": result["stdout"],
        "execution_mode": result["execution_mode"],
        "cleanup": result["cleanup"],
    }
    if args.json:
        print_json(report)
    else:
        print(
            f"pyro demo: {'OK' if ok else 'FAILED'} ({args.environment}, "
            f"accel={report['accel']}, boot={report['boot_kind']})"
        )
        for entry in steps:
            detail = entry.get("command", "") or (
                f"{entry['boot_kind']} start" if "boot_kind" in entry else ""
            )
            print(f"  {entry['step']:<7} {entry['ms']:>6} ms  {detail}")
        for command, output in outputs.items():
            print(f"  $ {command}\n    {output}")
    return 0 if ok else 1
