"""The host programs pyro runs, the Debian package that provides each, and the
one place that starts them.

Every host program pyro starts goes through :func:`run`, :func:`popen` or
:func:`spawn_async` (a test holds every other module to it): the program is a
:class:`HostTool`, found on PATH or in the sbin directories a non-login shell
leaves off PATH, or an absolute path found some other way (``sys.executable``,
a chat host's CLI). A missing program is a ``HostSetupError`` naming the
package that provides it, never a ``FileNotFoundError``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
E2FSCK = HostTool("e2fsck", "e2fsprogs", "replays the journal of a workspace disk read offline")
BUSYBOX = HostTool(
    "busybox", "busybox-static", "the guest's early userspace", ("/bin/busybox", "/usr/bin/busybox")
)
CPIO = HostTool("cpio", "cpio", "packs the guest initramfs")
MODINFO = HostTool("modinfo", "kmod", "orders the guest kernel modules")
APT_GET = HostTool("apt-get", "apt", "fetches the guest kernel package")
DPKG_DEB = HostTool("dpkg-deb", "dpkg", "unpacks the guest kernel package")
APT_CACHE = HostTool("apt-cache", "apt", "finds the guest kernel package")
CHROOT = HostTool("chroot", "coreutils", "lists the packages of an environment being built")
GIT = HostTool("git", "git", "seeds workspaces from Git checkouts")
TAR = HostTool("tar", "tar", "unpacks seed archives (faster than Python's tarfile)")
# Optional: only asked what the host's own package index settings are.
SKOPEO = HostTool("skopeo", "skopeo", "fetches and pushes OCI images")
ZSTD = HostTool("zstd", "zstd", "reads zstd-compressed image layers")
NPM = HostTool("npm", "npm", "names the npm registry guests may reach")
PYTHON3 = HostTool("python3", "python3", "names pip's default index")

RUNTIME_TOOLS = (QEMU, QEMU_IMG)
BUILD_TOOLS = (DEBOOTSTRAP, MKFS_EXT4, BUSYBOX, CPIO, MODINFO, APT_GET, APT_CACHE, DPKG_DEB, CHROOT)
ALL_TOOLS = RUNTIME_TOOLS + BUILD_TOOLS

# Where a program may live although PATH leaves it out (sudo's secure_path, a
# systemd unit, a non-login root shell: mkfs and chroot are in sbin).
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find(tool: HostTool) -> Path | None:
    """The tool's path on this host, looking in sbin too (mkfs is there).

    ``PYRO_QEMU`` names the QEMU binary explicitly; if it does not exist, QEMU
    counts as missing.
    """
    if tool is QEMU and config.qemu_override():
        override = Path(str(config.qemu_override()))
        return override if override.is_file() and os.access(override, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_DIRS])
    found = shutil.which(tool.command, path=search)
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


Program = HostTool | Path


def command(program: Program, args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``program``'s absolute path followed by ``args``.

    Raises:
        HostSetupError: a ``HostTool`` is not installed (names its package).
    """
    if isinstance(program, HostTool):
        path = require(program)[program.command]
    else:
        path = program
        if not path.is_absolute():
            raise ValueError(f"host programs are run by absolute path, not {path}")
    return [str(path), *(os.fspath(arg) for arg in args)]


def run(
    program: Program, args: Sequence[str | os.PathLike[str]] = (), **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run a host program to completion (``subprocess.run``, text mode, ``check=False``).

    ``options`` go to ``subprocess.run`` (``capture_output``, ``timeout``,
    ``cwd``, ``env``, ``input``, ``errors``); a timeout still raises
    ``subprocess.TimeoutExpired``.

    Raises:
        HostSetupError: the program is missing or cannot be executed.
    """
    argv = command(program, args)
    options.setdefault("check", False)
    options["text"] = True
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(argv, **options)
        return result
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise _cannot_run(program, argv[0], exc) from exc


def popen(
    program: Program, args: Sequence[str | os.PathLike[str]] = (), **options: Any
) -> subprocess.Popen[Any]:
    """Start a host program (``subprocess.Popen``) and return at once."""
    argv = command(program, args)
    try:
        return subprocess.Popen(argv, **options)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise _cannot_run(program, argv[0], exc) from exc


async def spawn_async(argv: Sequence[str], **options: Any) -> asyncio.subprocess.Process:
    """Start ``argv`` (absolute program path first) as an asyncio child process.

    Raises:
        OSError: the program cannot be started (the caller says what it was for).
    """
    if not Path(argv[0]).is_absolute():
        raise ValueError(f"host programs are run by absolute path, not {argv[0]}")
    return await asyncio.create_subprocess_exec(*argv, **options)


def _cannot_run(program: Program, path: str, exc: OSError) -> HostSetupError:
    if isinstance(program, HostTool):
        return HostSetupError(
            f"cannot run {path} ({program.purpose}): {exc.strerror or exc}. Reinstall it with: "
            f"sudo apt-get install --no-install-recommends --reinstall {program.package}"
        )
    return HostSetupError(f"cannot run {path}: {exc.strerror or exc}")


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    """The C library, for the system calls Python does not wrap (umount2, fallocate)."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
