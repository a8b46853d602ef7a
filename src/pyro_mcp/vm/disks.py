"""Per-VM disks: qcow2 overlays on an environment's read-only root image."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.errors import VMError


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay of the raw ``base``; costs only what the guest writes."""
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)], overlay)


def create_blank(image: Path, size_mib: int) -> None:
    """An empty qcow2 image of ``size_mib`` (a drive's stand-in; costs ~200 KB)."""
    _qemu_img(["create", "-q", "-f", "qcow2", str(image), f"{size_mib}M"], image)


def rebase_in_place(overlay: Path, backing: Path, backing_format: str = "raw") -> None:
    """Point ``overlay`` at ``backing`` (same content, another path): rewrites the header only."""
    _qemu_img(
        [
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
        overlay,
    )


def _qemu_img(args: list[str], image: Path) -> None:
    qemu_img = host_tools.require(host_tools.QEMU_IMG)["qemu-img"]
    result = subprocess.run([str(qemu_img), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VMError(f"qemu-img could not {args[0]} {image}: {result.stderr.strip()}")
