"""Runs one program in a network namespace of its own whose only way out is an
egress proxy, then becomes that program (standard library only).

    python -S -I confined.py HANDOFF_SOCKET PROGRAM [ARGS...]

pyro server runs ``skopeo`` this way for a principal without the
``private-registry`` capability (``egress/fetch_proxy.py``). The namespace has
nothing but its loopback, where this script listens on a free port; the
listening socket goes to the proxy over ``HANDOFF_SOCKET`` (SCM_RIGHTS), which
accepts each connection and serves it from the host's own network, checking
every destination when it connects. The program gets that port as its
``HTTPS_PROXY`` and ``HTTP_PROXY``. So a registry that redirects to a private
address is refused by the proxy, and one that redirects to loopback (which Go
programs reach without their proxy) finds nothing listening: the program
reaches no address pyro did not check.

As root the namespace is a plain one; otherwise a user namespace holds it
(the caller's user mapped to itself). Exit 125 when none can be made.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
CANNOT_CONFINE = 125


def _unshare() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) == 0:
        return
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    with open("/proc/self/setgroups", "w") as setgroups:
        setgroups.write("deny")
    with open("/proc/self/uid_map", "w") as uid_map:
        uid_map.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as gid_map:
        gid_map.write(f"{gid} {gid} 1")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: confined.py HANDOFF_SOCKET PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    handoff, program = argv[0], argv[1:]
    try:
        _unshare()
        _loopback_up()
    except OSError as exc:
        print(f"pyro: cannot make a network namespace for {program[0]}: {exc}", file=sys.stderr)
        return CANNOT_CONFINE
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as proxy:
        proxy.connect(handoff)
        socket.send_fds(proxy, [b"l"], [listener.fileno()])
        proxy.recv(1)  # the proxy has it: it serves until the program is done
    listener.close()
    environment = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    address = f"http://127.0.0.1:{port}"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        environment[name] = address
    os.execve(program[0], program, environment)
    return CANNOT_CONFINE  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
