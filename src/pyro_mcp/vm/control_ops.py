"""The supervisor's control operations (``ctl.sock``), one function each: the
only place the host names one. The supervisor's table of handlers
(``Supervisor._control``) answers them; a test holds the two to each other and
finds any operation named elsewhere. Guest operations, relayed through the same
socket, are ``agent/operations.py``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

Reply = dict[str, Any]
# A drive moving onto a new top: [the file it writes now, the new top's file].
Split = Sequence[str]


class Client(Protocol):
    def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]: ...


def own(client: Client) -> Reply:
    """Make this connection the VM's owner: an owner-bound VM stops when it closes."""
    return client.call("own")


def status(client: Client, timeout: float = 10) -> Reply:
    """The supervisor's state: ``qemu_pid``, ``pending`` guest requests, ..."""
    return client.call("status", timeout=timeout)


def pause(client: Client, timeout: float = 30) -> Reply:
    return client.call("pause", timeout=timeout)


def resume(client: Client, timeout: float = 30) -> Reply:
    return client.call("resume", timeout=timeout)


def add_port(client: Client, host_port: int, guest_port: int) -> Reply:
    """Forward ``host_port`` on the host's loopback to ``guest_port`` in the guest."""
    args = {"action": "add", "host_port": host_port, "guest_port": guest_port}
    return client.call("hostfwd", args)


def remove_port(client: Client, host_port: int) -> Reply:
    return client.call("hostfwd", {"action": "remove", "host_port": host_port})


def suspend(client: Client, path: Path, timeout: float) -> Reply:
    """Save the whole guest (memory and devices) to ``path``; QEMU quits after."""
    return client.call("suspend", {"path": str(path)}, timeout=timeout)


def save_template(client: Client, path: Path, timeout: float) -> Reply:
    """Save a template's device state to ``path`` (its RAM is a shared file already)."""
    return client.call("save_template", {"path": str(path)}, timeout=timeout)


def fork_save(client: Client, path: Path, splits: Sequence[Split], timeout: float) -> Reply:
    """Save the guest's memory to ``path`` and move its drives onto new tops, live."""
    args = {"path": str(path), "splits": [list(split) for split in splits]}
    return client.call("fork_save", args, timeout=timeout)


def split(client: Client, splits: Sequence[Split]) -> Reply:
    """Move drives onto new tops now (the caller froze what writes to them)."""
    return client.call("split", {"splits": [list(item) for item in splits]})


def drives(client: Client, timeout: float = 10) -> Reply:
    """The files the VM's drives write to now, by drive."""
    return client.call("drives", timeout=timeout)


def egress_reload(client: Client, timeout: float = 30) -> Reply:
    """Read the VM's egress settings again (new connections follow them)."""
    return client.call("egress_reload", timeout=timeout)


def shutdown(client: Client, timeout: float) -> Reply:
    return client.call("shutdown", timeout=timeout)
