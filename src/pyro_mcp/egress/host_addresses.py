"""The addresses of the machine pyro runs on, every interface's, of every class.

A guest's egress never reaches them unless the operator allows private egress
(``policy.is_public``): a service bound to the host's outward address, or to
all interfaces (a ``pyro server`` on 0.0.0.0, SSH, a database), is the host
all the same.

Read from the kernel's own tables (``/proc/net/fib_trie`` for IPv4 local
routes, ``/proc/net/if_inet6`` for IPv6), again after ``REFRESH_SECONDS`` so
an address a DHCP lease adds is covered within seconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from pathlib import Path

REFRESH_SECONDS = 5.0
FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_lock = threading.Lock()
_cached: tuple[float, frozenset[Address]] = (float("-inf"), frozenset())


def own() -> frozenset[Address]:
    """Every address of this machine's interfaces (cached for a few seconds)."""
    global _cached
    now = time.monotonic()
    with _lock:
        read_at, addresses = _cached
        if now - read_at > REFRESH_SECONDS:
            addresses = frozenset(_ipv4() | _ipv6())
            _cached = (now, addresses)
        return addresses


def _ipv4() -> set[Address]:
    """The ``/32 host LOCAL`` entries of the local routing table."""
    found: set[Address] = set()
    last = ""
    for line in _lines(FIB_TRIE):
        text = line.strip()
        if text.startswith(("|--", "+--")):
            last = text[3:].strip().split()[0]
        elif text == "/32 host LOCAL" and last:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv4Address(last))
    return found


def _ipv6() -> set[Address]:
    found: set[Address] = set()
    for line in _lines(IF_INET6):
        fields = line.split()
        if fields and len(fields[0]) == 32:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv6Address(int(fields[0], 16)))
    return found


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
