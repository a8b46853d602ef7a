"""A suspended VM's saved state: its whole memory and devices, next to its disks.

Suspending writes QEMU's migration stream (RAM and device state) to
``suspended.state`` in the VM directory, then ``suspended.json`` last: the
state's size and CRC-32, when it was saved, how guest RAM is to be laid out on
resume (``memory``, below), and the exact machine it must resume into. A state
is used only if all of that still holds; otherwise the VM cold-boots from its
disks and the reason is reported. The state is removed once the guest runs
again (it would only describe the past).

``memory`` is one of:

- ``base``: the guest mapped a warm snapshot's RAM file copy-on-write, and the
  VM directory keeps that file as ``memory.base`` (a hard link, so pruning the
  snapshot does not remove it). The stream holds only the pages that differ
  from it (see ``thin.py``): a few MiB for an idle guest. It resumes into a
  private mapping of ``memory.base`` again, so it shares the clean pages with
  every other guest of that snapshot, as a warm-started one does.
- ``anonymous``: a warm-started guest whose stream is whole (thinning it was not
  possible); it resumes into anonymous RAM with the same block id.
- ``plain``: a cold-booted guest (QEMU's default RAM).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.vm.qemu import MachineSpec

STATE_NAME = "suspended.state"
META_NAME = "suspended.json"
FORMAT = 2
# Format 1 had ``memory_anonymous`` (true: "anonymous", false: "plain").
READABLE_FORMATS = (1, 2)
MEMORY_LAYOUTS = ("plain", "anonymous", "base")
BASE_NAME = "memory.base"
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Saved:
    """A usable saved state: the stream to load and the machine to load it into."""

    state: Path
    memory: str  # one of MEMORY_LAYOUTS
    saved_at: float
    bytes: int
    # A fork's copy of another VM's memory: it gets a machine id of its own.
    fresh_identity: bool = False
    crc32: int = 0


def paths(vm_dir: Path) -> tuple[Path, Path]:
    return vm_dir / STATE_NAME, vm_dir / META_NAME


def partial(vm_dir: Path) -> Path:
    """Where the stream is written before it is complete and described."""
    return vm_dir / (STATE_NAME + ".partial")


def record(
    vm_dir: Path, machine: MachineSpec, memory: str, *, fresh_identity: bool = False
) -> Saved:
    """Describe a completed stream (at ``partial``) and make it the VM's saved state."""
    state, meta = paths(vm_dir)
    written = partial(vm_dir)
    size, crc = measure(written)
    with written.open("rb") as handle:
        os.fsync(handle.fileno())
    written.replace(state)
    saved_at = time.time()
    data = {
        "format": FORMAT,
        "bytes": size,
        "crc32": crc,
        "saved_at": saved_at,
        "memory": memory,
        "fresh_identity": fresh_identity,
        "machine": _machine_key(machine),
    }
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(meta)
    return Saved(state, memory, saved_at, size, fresh_identity, crc)


def exists(vm_dir: Path) -> bool:
    return paths(vm_dir)[1].exists()


def summary(vm_dir: Path) -> dict[str, Any] | None:
    """When and how large, for status (no checks)."""
    try:
        data = json.loads(paths(vm_dir)[1].read_text())
        return {"suspended_at": float(data["saved_at"]), "bytes": int(data["bytes"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(vm_dir: Path, machine_for: Any) -> tuple[Saved | None, str | None]:
    """The saved state if it is complete and fits this host's machine, else why not.

    ``machine_for(memory)`` builds the machine the state would resume
    into today; it must equal the one recorded at suspend time. The checksum is
    not read here: the supervisor checks ``Saved.crc32`` while QEMU loads the
    state, before the guest runs.
    """
    state, meta = paths(vm_dir)
    if not meta.exists():
        if state.exists() or partial(vm_dir).exists():
            return None, "the saved memory was never completed (the suspend was interrupted)"
        return None, None
    try:
        data = json.loads(meta.read_text())
        size, crc = int(data["bytes"]), int(data["crc32"])
        if data.get("format") not in READABLE_FORMATS:
            return None, f"the saved memory has format {data.get('format')}, not {FORMAT}"
        if data["format"] == 1:
            memory = "anonymous" if data["memory_anonymous"] else "plain"
        else:
            memory = data["memory"]
        fresh_identity = bool(data.get("fresh_identity", False))
        machine = data["machine"]
        if memory not in MEMORY_LAYOUTS:
            return None, f"the saved memory's layout {memory!r} is unknown"
    except (OSError, ValueError, KeyError, TypeError):
        return None, "the saved memory's description is unreadable"
    try:
        actual_size = state.stat().st_size
    except OSError:
        return None, "the saved memory is missing"
    if actual_size != size:
        return None, "the saved memory is corrupt (its size changed)"
    if memory == "base" and not (vm_dir / BASE_NAME).exists():
        return None, f"the snapshot memory it was saved against ({BASE_NAME}) is missing"
    if _machine_key(machine_for(memory)) != machine:
        return None, "QEMU, the environment or the VM's shape changed since it was suspended"
    saved_at = float(data.get("saved_at", 0))
    return Saved(state, memory, saved_at, size, fresh_identity, crc), None


def discard(vm_dir: Path) -> None:
    """Remove the saved state (description first, so a half-removed one is never used)."""
    state, meta = paths(vm_dir)
    for path in (meta, state, partial(vm_dir), meta.with_suffix(".tmp")):
        with contextlib.suppress(OSError):
            path.unlink()


def measure(path: Path) -> tuple[int, int]:
    """Size and CRC-32 of a saved state."""
    size, crc = 0, 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
    return size, crc


def _machine_key(machine: MachineSpec) -> dict[str, Any]:
    """What must match between the suspended QEMU and the resuming one."""
    stat = machine.qemu.stat()
    key: dict[str, Any] = {
        "argv": machine.argv(),
        "qemu": [str(machine.qemu), stat.st_size, int(stat.st_mtime)],
    }
    if machine.memory_file is not None:
        # The pages left out of a thin stream are this file's: it must be the same one.
        base = machine.memory_file.stat()
        key["base"] = [base.st_ino, base.st_size, base.st_mtime_ns]
    return key
