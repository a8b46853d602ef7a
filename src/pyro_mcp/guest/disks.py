"""The guest's disks: mounting /workspace and the baseline, keeping /workspace
writable after write errors, trimming, freezing and flushing (standard library only)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import time
from typing import Any

try:
    from pyro_mcp.guest import changes, fileops, system
except ImportError:  # inside the guest, beside this file
    import changes  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]
    import system  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError


# linux/fs.h: BLKFLSBUF _IO(0x12, 97).
BLKFLSBUF = 0x1261

# What the hello may mount: the disk's virtio serial, where, and how.
MOUNTS = {
    "workspace": ("pyro-workspace", "/workspace", "rw,noatime,discard"),
    "baseline": ("pyro-baseline", "/run/pyro/baseline", "ro,noload"),
}
DISK_WAIT_SECONDS = 20.0


def _find_disk(serial: str) -> str:
    """The /dev path of the virtio disk with this serial (no udev in the guest)."""
    deadline = time.monotonic() + DISK_WAIT_SECONDS
    while True:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir("/sys/block")):
                try:
                    with open(f"/sys/block/{name}/serial", encoding="utf-8") as handle:
                        if handle.read().strip() == serial:
                            return f"/dev/{name}"
                except OSError:
                    continue
        if time.monotonic() > deadline:
            raise RequestError("no_disk", f"no disk with serial {serial} in the guest")
        time.sleep(0.01)


def mount_disk(serial: str, target: str, options: str) -> bool:
    """Mount the disk with this serial on ``target``; False if it already was."""
    device = _find_disk(serial)
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as handle:
        if any(line.split()[1] == target for line in handle if len(line.split()) > 1):
            return False  # already mounted (a second hello on the same boot)
    # A restored guest still caches blocks it read from the disk that was attached
    # when the snapshot was taken (the partition scan); drop them first.
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)
    os.makedirs(target, exist_ok=True)
    words = options.split(",")
    flags = MS_NOATIME | (MS_RDONLY if "ro" in words else 0)
    data = ",".join(w for w in words if w in ("noload", "discard")).encode() or None
    if system.libc().mount(device.encode(), target.encode(), b"ext4", flags, data) != 0:
        error = ctypes.get_errno()
        raise RequestError(
            "mount_failed", f"cannot mount {device} on {target}: {os.strerror(error)}"
        )
    return True


# sys/mount.h
MS_RDONLY = 1
MS_NOATIME = 1024


# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def op_freeze(args: dict[str, Any]) -> dict[str, Any]:
    """Flush and freeze /workspace (writes block until thawed), or thaw it."""
    fd = os.open("/workspace", os.O_RDONLY)
    try:
        if args.get("freeze"):
            os.sync()
            fcntl.ioctl(fd, FIFREEZE, 0)
        else:
            with contextlib.suppress(OSError):  # not frozen
                fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)
    return {"frozen": bool(args.get("freeze"))}


WORKSPACE = "/workspace"
# linux/fs.h: FITRIM _IOWR('X', 121, struct fstrim_range).
FITRIM = 0xC0185879


def op_workspace_check(args: dict[str, Any]) -> dict[str, Any]:
    """Is /workspace writable? If its ext4 stopped after write errors, mount it again.

    When the host's disk fills, the guest's writes fail with I/O errors. Most
    land on file data and are reported to the writer; when one lands on the
    journal, ext4 aborts it and turns the whole filesystem read-only, and no
    later write (not even ``rm``) works until it is mounted again, which
    replays the journal. The host asks before commands that write.
    """
    if not system.is_guest() or not os.path.ismount(WORKSPACE):
        return {"state": "ok"}
    problem = _workspace_problem()
    if problem is None:
        return {"state": "ok"}
    try:
        _remount_workspace()
    except RequestError as exc:
        return {"state": "read_only", "message": f"{problem}; {exc}"}
    again = _workspace_problem()
    if again is not None:
        return {"state": "read_only", "message": f"{again} (after mounting it again)"}
    # Blocks written before the journal stopped may be free in ext4 now but
    # still held on the host's disk: discard every free block.
    _trim_workspace()
    return {"state": "repaired", "message": problem}


def op_trim(args: dict[str, Any]) -> dict[str, Any]:
    """Discard every free block of /workspace (the host asks when its disk is low)."""
    if not system.is_guest() or not os.path.ismount(WORKSPACE):
        return {"trimmed": 0}
    return {"trimmed": _trim_workspace()}


def _trim_workspace() -> int:
    """FITRIM /workspace; the bytes the kernel discarded (0 if it could not)."""
    with contextlib.suppress(OSError):
        fd = os.open(WORKSPACE, os.O_RDONLY)
        try:
            result = fcntl.ioctl(fd, FITRIM, struct.pack("QQQ", 0, 2**64 - 1, 0))
        finally:
            os.close(fd)
        return int(struct.unpack("QQQ", result)[1])
    return 0


def _workspace_problem() -> str | None:
    """Why /workspace cannot take a write, or None; creates no visible file."""
    try:
        fd = os.open(WORKSPACE, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "/workspace is read-only: its filesystem stopped after write errors"
        if exc.errno == errno.EIO:
            return "/workspace fails every write: its filesystem shut down after I/O errors"
        return None  # full (ENOSPC) or out of inodes: writable once room is made
    os.close(fd)
    return None


def _remount_workspace() -> None:
    """Unmount /workspace and mount it again (ext4 replays its journal on mount)."""
    changes.TRACKER.stop()  # the next diff walks everything and watches anew
    if system.libc().umount2(WORKSPACE.encode(), 0) != 0:
        error = ctypes.get_errno()
        if error == errno.EBUSY:
            raise RequestError(
                "busy",
                "it cannot be mounted again while a service, shell or command still "
                "uses it: stop them, or stop and start the workspace",
            )
        raise RequestError("umount_failed", f"cannot unmount it: {os.strerror(error)}")
    serial, target, options = MOUNTS["workspace"]
    try:
        mount_disk(serial, target, options)
    except RequestError as exc:
        # Keep the files readable (and the empty mount point hidden).
        with contextlib.suppress(RequestError):
            mount_disk(serial, target, "ro,noload")
        raise RequestError(
            "mount_failed", f"{exc}; it is mounted read-only until there is room on the host"
        ) from exc


def op_sync(args: dict[str, Any]) -> dict[str, Any]:
    """Flush every filesystem; with ``freeze``, also freeze those mount points.

    The host asks for ``freeze: ["/workspace"]`` right before it stops the VM:
    a frozen ext4 has its journal flushed and is marked clean on disk, so the
    stopped workspace's disk is whole for offline tools and the next mount.
    """
    os.sync()
    frozen = []
    for path in args.get("freeze") or []:
        if isinstance(path, str) and os.path.ismount(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
                frozen.append(path)
            except OSError:
                pass
            finally:
                os.close(fd)
    return {"frozen": frozen}
