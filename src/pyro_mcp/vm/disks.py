"""Per-VM disks: qcow2 overlays on an environment's read-only root image."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.errors import VMError


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay of the raw ``base``; costs only what the guest writes."""
    qemu_img = host_tools.require(host_tools.QEMU_IMG)["qemu-img"]
    result = subprocess.run(
        [
            str(qemu_img),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(base),
            str(overlay),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"qemu-img could not create {overlay}: {result.stderr.strip()}")


def create_blank(image: Path, size_mib: int) -> None:
    """An empty qcow2 image of ``size_mib`` (a drive's stand-in; costs ~200 KB)."""
    qemu_img = host_tools.require(host_tools.QEMU_IMG)["qemu-img"]
    result = subprocess.run(
        [str(qemu_img), "create", "-q", "-f", "qcow2", str(image), f"{size_mib}M"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"qemu-img could not create {image}: {result.stderr.strip()}")


def rebase_in_place(overlay: Path, backing: Path, backing_format: str = "raw") -> None:
    """Point ``overlay`` at ``backing`` (same content, another path): rewrites the header only."""
    qemu_img = host_tools.require(host_tools.QEMU_IMG)["qemu-img"]
    result = subprocess.run(
        [
            str(qemu_img),
            "rebase",
            "-u",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing_format,
            "-b",
            str(backing),
            str(overlay),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"qemu-img could not rebase {overlay}: {result.stderr.strip()}")
