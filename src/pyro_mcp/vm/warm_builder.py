"""The building guest, warm: ``env pull``, ``env build`` and ``env push`` restore a
saved building guest instead of booting one (about 0.3 s instead of ~9 s under TCG).

A building guest boots from the runtime drive (``environments/runtime.py``) with
the disk being built as its /workspace drive and the layer or context blobs as
its read-only baseline drive (``vm/image_builder.py``). Its template is booted
once per cache and per shape (no NIC, or a NIC for ``RUN`` steps with egress)
with stand-ins for both drives, never mounted, and saved whole (memory and
devices, as a suspend saves a workspace) under
``CACHE/warm-builder/builder/<shape>/`` in ``vm/warm.py``'s layout, the stream
in place of the device state and no shared RAM file. A build restores it with
its own drives into anonymous memory; the hello mounts them (the guest flushes
its buffers of the stand-ins first, ``guest/disks.py``).

Why not a shared RAM file, as workspaces' warm snapshots have: a guest mapping
a file privately gets no transparent huge pages, and under TCG that cost a
233 MiB layer's extraction 19 s instead of 13. A builder runs briefly, and its
whole state loads in a fraction of a second; nothing is shared between two
builds, whoever started them.

The stand-ins are larger than any real drive (``STANDIN_MIB``): the restored
guest keeps the size it saw at boot, and reads only the filesystems on the
drives, which end where the real drives end.

The snapshot's key holds what it is only valid for: the runtime drive and the
kernel it boots, pyro's guest program (the initramfs's name is its hash), the
QEMU binary, the accelerator and pyro's version. One that no longer matches is
never restored: the next build takes a new one. A restore that fails falls back
to a cold boot and drops the snapshot, so the next build takes a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.environments.cache import used_bytes
from pyro_mcp.errors import PyroError, VMError
from pyro_mcp.vm import backend, control_ops, disks, suspend, warm
from pyro_mcp.vm.files import VmFiles
from pyro_mcp.vm.qemu import MachineSpec

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

BUILDER = "builder"
WARM_DIR = "warm-builder"
# Every real drive of a building guest is at most this big (pulls take up to
# 256 GiB; blob images are far smaller): the stand-ins are this big, sparse.
STANDIN_MIB = 262_144
SAVE_TIMEOUT_SECONDS = 90
# Bump when the template's machine or kernel arguments change.
LAYOUT = 3

Progress = Callable[[str], None]


def store(cache_dir: Path) -> warm.WarmStore:
    return warm.WarmStore(cache_dir / WARM_DIR)


def key(machine: MachineSpec, runtime: Path, kernel_version: str) -> warm.WarmKey:
    """What a building guest's snapshot is only valid for."""
    from pyro_mcp.version import __version__

    return warm.WarmKey(
        environment=BUILDER,
        build_id=f"{runtime.parent.name}/{kernel_version}/layout-{LAYOUT}",
        guest_files=machine.initrd.name,
        qemu=warm.qemu_identity(machine.qemu),
        accel=machine.accel,
        vcpu_count=machine.vcpu_count,
        mem_mib=machine.mem_mib,
        network=machine.network,
        pyro_version=__version__,
    )


def snapshot(
    snapshots: warm.WarmStore,
    machine: MachineSpec,
    runtime: Path,
    key: warm.WarmKey,
    progress: Progress,
) -> warm.WarmSnapshot | None:
    """The current snapshot for ``key``, taken first when there is none (or a
    stale one); None when warm starts are off (``PYRO_WARM=0``) or the snapshot
    cannot be had (taking it failed, the cache folder is not writable): the
    build then boots cold, and says why."""
    if not config.warm_enabled():
        return None
    try:
        return _current_or_new(snapshots, machine, runtime, key, progress)
    except (PyroError, OSError) as exc:
        progress(f"phase=warm no warm building guest ({str(exc)[:300]}); booting cold")
        return None


def _current_or_new(
    snapshots: warm.WarmStore,
    machine: MachineSpec,
    runtime: Path,
    key: warm.WarmKey,
    progress: Progress,
) -> warm.WarmSnapshot:
    with snapshots.lock(key):
        # Sizes and change times here; the stream's checksum is checked as it loads.
        status = snapshots.status(key, verify=False)
        if status.snapshot is not None:
            return status.snapshot
        why = "none yet" if status.status == "cold" else status.reason
        progress(f"phase=warm saving a building guest to restore from now on ({why})")
        partial = snapshots.new_partial(key)
        try:
            size, crc = _take(machine, runtime, partial)
            made = snapshots.commit(key, partial, {"state": {"bytes": size, "crc32": crc}})
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        # Earlier snapshots of this shape are of no further use (a build
        # restoring one has read it whole by the time its guest runs).
        for old in (snapshots.shape_dir(key) / "snapshots").glob("*"):
            if old.resolve() != made.directory.resolve():
                shutil.rmtree(old, ignore_errors=True)
        return made


def launch(
    files: VmFiles,
    machine: MachineSpec,
    made: warm.WarmSnapshot,
    hello: dict[str, Any],
    timeout: float,
) -> dict[str, Any]:
    """Restore ``made`` as this building guest, with ``machine``'s own drives."""
    shutil.copyfile(made.root_disk, files.root_disk)
    state = made.manifest.get("state") or {}
    return backend.launch(
        files,
        dataclasses.replace(machine, incoming=True),
        timeout,
        owner_bound=True,
        restore=made.devices,
        restore_shared=False,
        restore_check={"bytes": int(state.get("bytes", -1)), "crc32": int(state.get("crc32", -1))},
        hello=hello,
    )


def prune(cache_dir: Path, *, everything: bool = False) -> dict[str, Any]:
    """Remove building-guest snapshots no build can restore: those of another
    guest program, layout, vCPU count or pyro version, and the ones a newer
    snapshot replaced (``everything``: all of them). A shape a build is taking
    or restoring right now (its lock is held) is left alone, and so is a store
    this cache links to from another."""
    from pyro_mcp.environments import builder
    from pyro_mcp.version import __version__

    removed: list[str] = []
    freed = 0
    if (cache_dir / WARM_DIR).is_symlink():  # another cache's, shared with this one
        return {"removed": removed, "freed_bytes": freed}
    root = store(cache_dir).root / BUILDER
    for shape in sorted(p for p in root.glob("*") if p.is_dir()):
        with contextlib.suppress(OSError), (shape / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            current = (shape / "current").resolve() if (shape / "current").exists() else None
            key = _recorded_key(current) if current is not None else {}
            usable = (
                not everything
                and key.get("guest_files") == f"initrd-{builder.guest_files_hash()}.img"
                and str(key.get("build_id", "")).endswith(f"/layout-{LAYOUT}")
                and key.get("vcpu_count") == min(2, os.cpu_count() or 1)
                and key.get("pyro_version") == __version__
            )
            for snapshot in sorted((shape / "snapshots").glob("*")):
                if usable and current is not None and snapshot.resolve() == current:
                    continue
                freed += used_bytes(snapshot)
                shutil.rmtree(snapshot, ignore_errors=True)
                removed.append(str(snapshot))
            if not usable:
                (shape / "current").unlink(missing_ok=True)
    return {"removed": removed, "freed_bytes": freed}


def _recorded_key(snapshot: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((snapshot / "manifest.json").read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("key"), dict):
            return dict(manifest["key"])
    return {}


def forget(snapshots: warm.WarmStore, key: warm.WarmKey) -> None:
    """Drop ``key``'s current snapshot after a failed restore: the next build takes
    a new one instead of failing the same way."""
    with contextlib.suppress(OSError), snapshots.lock(key):
        (snapshots.shape_dir(key) / "current").unlink(missing_ok=True)


def _take(machine: MachineSpec, runtime: Path, partial: Path) -> tuple[int, int]:
    """Boot the template building guest with stand-in drives and save it whole into
    ``partial``; the saved stream's size and CRC-32."""
    disks.create_overlay(runtime, partial / warm.ROOT)
    disks.create_blank(partial / warm.WORKSPACE, STANDIN_MIB)
    with (partial / warm.BASELINE).open("wb") as handle:
        handle.truncate(STANDIN_MIB * 2**20)
    os.chmod(partial / warm.BASELINE, 0o444)
    (partial / warm.RAM).touch()  # no shared RAM: the stream holds the memory
    files = VmFiles(partial / "template")
    files.dir.mkdir(mode=0o700)
    template = dataclasses.replace(
        machine,
        root_disk=partial / warm.ROOT,
        workspace_disk=partial / warm.WORKSPACE,
        baseline_disk=partial / warm.BASELINE,
        free_page_reporting=False,
        incoming=False,
    )
    state = partial / warm.DEVICES
    try:
        report = backend.launch(
            files,
            template,
            config.BOOT_TIMEOUT_SECONDS,
            owner_bound=True,
            hello={"mounts": {}},
            watch_pid=os.getpid(),
        )
        backend.save_and_exit(
            files, int(report["pid"]), control_ops.suspend, state, SAVE_TIMEOUT_SECONDS
        )
    finally:
        shutil.rmtree(files.dir, ignore_errors=True)
    if not state.is_file() or state.stat().st_size == 0:
        raise VMError("saving the template building guest wrote nothing")
    return suspend.measure(state)
