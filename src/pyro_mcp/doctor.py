"""``pyro doctor``: can this host run guests, and if not, what to do."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from pyro_mcp import config, host_tools
from pyro_mcp.environments.cache import EnvironmentCache
from pyro_mcp.errors import HostSetupError, PyroError
from pyro_mcp.models import VmState
from pyro_mcp.vm import accel, merge
from pyro_mcp.vm.qemu import qemu_version
from pyro_mcp.vm.service import VmService

# Host memory an idle warm-started workspace holds (QEMU PSS, benchmarks/density.py);
# what "room for N more" in the capacity line assumes.
IDLE_GUEST_MIB = 100


def diagnose(paths: config.Paths, *, platform_only: bool = False) -> dict[str, Any]:
    """A structured report; ``ok`` is False when guests cannot run here."""
    problems: list[str] = []
    warnings: list[str] = []

    tools: list[dict[str, Any]] = []
    for tool in host_tools.ALL_TOOLS:
        path = host_tools.find(tool)
        tools.append(
            {
                "command": tool.command,
                "package": tool.package,
                "purpose": tool.purpose,
                "found": path is not None,
                "path": str(path) if path else None,
                "needed_for": "running" if tool in host_tools.RUNTIME_TOOLS else "building",
            }
        )
    for needed_for, findings in (("running", problems), ("building", warnings)):
        missing = " ".join(
            sorted(
                {
                    str(t["package"])
                    for t in tools
                    if not t["found"] and t["needed_for"] == needed_for
                }
            )
        )
        if missing:
            findings.append(
                f"cannot {'run guests' if needed_for == 'running' else 'build environments'}: "
                f"install {missing} (sudo apt-get install --no-install-recommends {missing})"
            )
    if os.geteuid() != 0:
        warnings.append("building environments needs root (debootstrap); running them does not")

    qemu_path = host_tools.find(host_tools.QEMU)
    qemu = {
        "path": str(qemu_path) if qemu_path else None,
        "version": qemu_version(qemu_path) if qemu_path else None,
        "user_networking": _has_user_networking(str(qemu_path)) if qemu_path else False,
    }

    try:
        decision = accel.static_decision()
        if decision is None:
            cached = accel.cached_probe(paths.cache_dir / "kvm-probe.json", "") or {}
            decision = accel.AccelDecision(
                "kvm" if cached.get("usable") else "tcg",
                "KVM looks usable; the first start boots a probe guest to confirm",
                True,
                None,
            )
        accel_info: dict[str, Any] = decision.to_dict()
    except PyroError as exc:
        problems.append(str(exc))
        accel_info = {
            "accel": None,
            "reason": str(exc),
            "kvm_present": os.path.exists("/dev/kvm"),
            "kvm_usable": None,
        }
    if accel_info.get("accel") == "tcg":
        warnings.append(
            "guests run under TCG (software emulation): expect about 4-5 s per cold boot"
        )

    memory_merge = merge.status()
    if memory_merge.state != "on":
        warnings.append(
            memory_merge.note + (f"; to turn it on, {memory_merge.fix}" if memory_merge.fix else "")
        )

    space = config.low_space_warning(paths.state_dir)
    if space is not None:
        warnings.append(space)
    environments = (
        [] if platform_only else [s.to_dict() for s in EnvironmentCache(paths.cache_dir).list()]
    )
    if not platform_only and not any(env["installed"] for env in environments):
        warnings.append("no environment is installed yet; run `pyro env pull debian:12`")

    kvm_device = Path("/dev/kvm")
    return {
        "ok": not problems,
        # pyro-mcp 4.5's names: whether guests can run, and the KVM device's access.
        "runtime_ok": not problems,
        "kvm": {
            "exists": kvm_device.exists(),
            "readable": os.access(kvm_device, os.R_OK),
            "writable": os.access(kvm_device, os.W_OK),
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "distribution": _os_release(),
            "root": os.geteuid() == 0,
        },
        "accel": accel_info,
        "qemu": qemu,
        "host_tools": tools,
        "networking": {
            "user_mode_nat": qemu["user_networking"],
            "note": "guests have no NIC unless --network is given; with one they reach only "
            "pyro's egress proxy (QEMU user-mode networking, restrict=on)",
        },
        "memory_merge": memory_merge.to_dict(),
        "state_dir": str(paths.state_dir),
        "cache_dir": str(paths.cache_dir),
        **({} if platform_only else {"environments": environments}),
        "problems": problems,
        "warnings": warnings,
    }


def daily_loop(vms: VmService, environment: str) -> dict[str, Any]:
    """Whether workspaces of ``environment`` start warm, and the command that makes them."""
    fix = f"pyro prepare {environment}"
    # pyro-mcp 4.5's fields beside pyro's: whether the environment is installed,
    # the NIC variant as a flag, where the snapshot's manifest and the cache are.
    try:
        installed = vms.environments.status(environment).installed
    except PyroError:  # an unknown name: nothing is installed under it
        installed = False
    facts = {"installed": installed, "cache_dir": str(vms.paths.cache_dir)}
    try:
        status = vms.warm_status(environment)
        network = vms.warm_status(environment, network=True, verify=False)
    except PyroError as exc:
        return {
            "environment": environment,
            "status": "cold",
            "reason": str(exc),
            "prepared_at": None,
            "fix": fix,
            "network_prepared": False,
            "manifest_path": None,
            **facts,
        }
    shown = status.to_dict()
    return {
        "environment": environment,
        **shown,
        "warm_enabled": config.warm_enabled(),
        "network": {"status": network.status, "reason": network.reason},
        "fix": fix if status.status != "warm" or network.status != "warm" else None,
        "network_prepared": network.status == "warm",
        "manifest_path": shown.get("path"),
        **facts,
    }


def capacity(vms: VmService) -> dict[str, Any]:
    """How many workspaces run and are suspended, and how many more this host can run."""
    records = vms.list_vms()
    running = sum(1 for r in records if r.state is VmState.RUNNING)
    suspended = sum(
        1 for r in records if r.state is VmState.STOPPED and vms.suspended(r.vm_id) is not None
    )
    cap = config.max_running_vms()
    available = _mem_available_mib()
    by_memory = available // IDLE_GUEST_MIB if available is not None else cap
    return {
        "running": running,
        "suspended": suspended,
        "max_running": cap,
        "room_for": max(0, min(cap - running, by_memory)),
        "memory_available_mib": available,
        "note": (
            "suspended workspaces hold no memory; running ones suspend after "
            f"idle_suspend_seconds (default {config.DEFAULT_IDLE_SUSPEND_SECONDS} s)"
        ),
    }


def _mem_available_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _has_user_networking(qemu: str) -> bool:
    try:
        result = host_tools.run(Path(qemu), ["-netdev", "help"], capture_output=True, timeout=10)
    except (HostSetupError, subprocess.TimeoutExpired):
        return False
    return any(line.strip() == "user" for line in result.stdout.splitlines())


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"
