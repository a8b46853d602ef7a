"""Making a boot the guest's own: clock, entropy, name, machine id, disks (the hello),
and the facts the agent reports about itself (standard library only)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import platform
import re
import socket
import struct
import time
from typing import Any

try:
    from pyro_mcp.guest import changes, disks, fileops, network, processes, system
except ImportError:  # inside the guest, beside this file
    import changes  # type: ignore[import-not-found,no-redef]
    import disks  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]
    import network  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]
    import system  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError


AGENT_VERSION = "1"


# ---------------------------------------------------------------- operations


def op_hello(args: dict[str, Any]) -> dict[str, Any]:
    """Make this boot (or this restore of a warm snapshot) its own; answer with facts.

    Every guest restored from one memory snapshot starts with the same clock,
    random generator state, hostname and machine id. The host's hello fixes
    each: the wall clock, fresh entropy credited and a forced reseed of the
    kernel's generator (writing to /dev/urandom alone mixes the pool but does
    not reseed it), the name and the machine id. Then it mounts /workspace and
    the baseline, which are never mounted in a snapshot. With ``egress``, it
    points the guest's clients at the egress proxy (see ``op_egress``).
    """
    time_ns = args.get("time_ns")
    if isinstance(time_ns, int) and system.is_guest():
        with contextlib.suppress(OSError):
            time.clock_settime(time.CLOCK_REALTIME, time_ns / 1e9)
    entropy = args.get("entropy")
    if isinstance(entropy, str) and system.is_guest():
        with contextlib.suppress(OSError, ValueError):
            _reseed(base64.b64decode(entropy))
    hostname = args.get("hostname")
    if isinstance(hostname, str) and _HOSTNAME.match(hostname) and system.is_guest():
        socket.sethostname(hostname)
        system.write_file("/run/pyro/hostname", hostname + "\n")  # /etc/hostname links here
    machine_id = args.get("machine_id")
    if isinstance(machine_id, str) and _MACHINE_ID.match(machine_id) and system.is_guest():
        system.write_file("/run/pyro/machine-id", machine_id + "\n")  # /etc/machine-id too
    image = args.get("image")
    if isinstance(image, dict) and system.is_guest():
        processes.apply_image(image)  # before the mounts: /workspace is given to its user
    mounts = args.get("mounts") or {}
    if not isinstance(mounts, dict):
        raise RequestError("bad_args", "mounts must be an object")
    mounted = []
    for name, (serial, target, options) in disks.MOUNTS.items():
        if mounts.get(name) and system.is_guest():
            if disks.mount_disk(serial, target, options) and name == "workspace":
                # From now on every change is on record; ``fresh``: the disk was
                # just made from the baseline, so the record is whole.
                if args.get("fresh_workspace"):
                    processes.own_workspace(target)  # an image's user: before the record starts
                changes.TRACKER.start(fresh=bool(args.get("fresh_workspace")))
            mounted.append(target)
    egress = args.get("egress")
    if isinstance(egress, dict) and system.is_guest():
        network.op_egress(egress)  # in the hello: no round trip more on the boot path
    elif system.is_guest():
        network.forget_egress()  # a root saved from a workspace that had a network
    return {"nonce": args.get("nonce"), "mounted": mounted, **op_info({})}


_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")

# linux/random.h: RNDADDENTROPY _IOW('R', 0x03, int[2]); RNDRESEEDCRNG _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207


def _reseed(data: bytes) -> None:
    """Credit ``data`` as entropy and force the kernel's generator to reseed now."""

    if not data:
        return
    padded = data + b"\0" * (-len(data) % 4)
    request = struct.pack("ii", len(data) * 8, len(padded)) + padded
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, request)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def op_ping(args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True}


def op_info(args: dict[str, Any]) -> dict[str, Any]:
    os_release = ""
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    os_release = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "agent_version": AGENT_VERSION,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "os": os_release,
    }
