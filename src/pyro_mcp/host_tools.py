"""The host programs pyro relies on, and the Debian package that provides each."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import config
from pyro_mcp.errors import HostSetupError


@dataclass(frozen=True)
class HostTool:
    command: str
    package: str
    purpose: str
    candidates: tuple[str, ...] = ()


QEMU = HostTool("qemu-system-x86_64", "qemu-system-x86", "runs the microVMs")
QEMU_IMG = HostTool("qemu-img", "qemu-utils", "creates per-VM disk overlays")
DEBOOTSTRAP = HostTool("debootstrap", "debootstrap", "builds environment root filesystems")
MKFS_EXT4 = HostTool("mkfs.ext4", "e2fsprogs", "turns root filesystems into disk images")
DEBUGFS = HostTool("debugfs", "e2fsprogs", "reads stopped workspace disks offline")
BUSYBOX = HostTool(
    "busybox", "busybox-static", "the guest's early userspace", ("/bin/busybox", "/usr/bin/busybox")
)
CPIO = HostTool("cpio", "cpio", "packs the guest initramfs")
MODINFO = HostTool("modinfo", "kmod", "orders the guest kernel modules")
APT_GET = HostTool("apt-get", "apt", "fetches the guest kernel package")
DPKG_DEB = HostTool("dpkg-deb", "dpkg", "unpacks the guest kernel package")

RUNTIME_TOOLS = (QEMU, QEMU_IMG)
BUILD_TOOLS = (DEBOOTSTRAP, MKFS_EXT4, BUSYBOX, CPIO, MODINFO, APT_GET, DPKG_DEB)
ALL_TOOLS = RUNTIME_TOOLS + BUILD_TOOLS


def find(tool: HostTool) -> Path | None:
    """The tool's path on this host, looking in sbin too (mkfs is there).

    ``PYRO_QEMU`` names the QEMU binary explicitly; if it does not exist, QEMU
    counts as missing.
    """
    if tool is QEMU and config.qemu_override():
        override = Path(str(config.qemu_override()))
        return override if override.is_file() and os.access(override, os.X_OK) else None
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    found = shutil.which(tool.command, path=os.environ.get("PATH", "") + os.pathsep + extra)
    if found:
        return Path(found)
    for candidate in tool.candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def require(*tools: HostTool) -> dict[str, Path]:
    """Paths of ``tools``; one error naming every missing package otherwise."""
    found: dict[str, Path] = {}
    missing: list[HostTool] = []
    for tool in tools:
        path = find(tool)
        if path is None:
            missing.append(tool)
        else:
            found[tool.command] = path
    if missing:
        names = ", ".join(f"{t.command} ({t.purpose})" for t in missing)
        packages = " ".join(sorted({t.package for t in missing}))
        raise HostSetupError(
            f"missing host tools: {names}. Install them with: "
            f"sudo apt-get install --no-install-recommends {packages} "
            "(then `pyro doctor` checks the whole host)"
        )
    return found


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    """The C library, for the system calls Python does not wrap (umount2, fallocate)."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
