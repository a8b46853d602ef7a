"""Warm snapshots: a booted guest, agent ready, saved so VMs restore instead of booting.

Layout under the cache dir::

    warm/<env slug>/<shape>/current -> snapshots/<id>      (symlink, swapped atomically)
    warm/<env slug>/<shape>/snapshots/<id>/manifest.json   (written last)
        ram.img          guest RAM, written by the template (share=on); every warm VM
                         maps it privately, so its clean pages are shared by all of them
        devices.snap     device state only (an x-ignore-shared migration stream, ~60 KB)
        root.qcow2       the template's root overlay: a warm VM starts on a copy of it
        workspace.qcow2  the workspace drive's stand-in (never mounted in the template)
        baseline.img     the baseline drive's stand-in (read-only)
    warm/<env slug>/<shape>/.lock                          (one writer per shape)

``<shape>`` is what the snapshot cannot change after the fact: vCPUs, memory and
whether there is a NIC (``1cpu-1024m``, ``1cpu-1024m-net``). Everything else
that makes a snapshot valid (the environment build, pyro's init and agent, the
QEMU binary, the accelerator, pyro's version) is its key: a snapshot whose key
differs from today's is ``stale`` and never used.

A snapshot is never changed once written. ``pyro prepare --force`` writes a new
one and swaps ``current``; a warm VM still running from the old one keeps its
mapping of the old RAM file even after prune unlinks it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.environments.builder import sha256_file
from pyro_mcp.environments.cache import InstalledEnvironment, used_bytes
from pyro_mcp.environments.catalog import slug
from pyro_mcp.vm.qemu import qemu_version

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

# Bump when the machine layout of warm VMs changes (devices, their order, RAM
# backend): a snapshot of another layout cannot be restored.
SNAPSHOT_FORMAT = 3
RAM = "ram.img"
DEVICES = "devices.snap"
ROOT = "root.qcow2"
WORKSPACE = "workspace.qcow2"
BASELINE = "baseline.img"
# What a first snapshot is assumed to need on disk (measured: ~165 MB for a
# 1 GiB debian:12 guest under TCG, most of it the RAM the boot touched).
DEFAULT_SNAPSHOT_BYTES = 256 * 1024 * 1024
# Files small enough to hash on every use.
HASHED = (DEVICES, ROOT, WORKSPACE)

# What a changed key field means, for `pyro doctor`.
_CHANGED = {
    "build_id": "the environment was rebuilt",
    "guest_files": "pyro's guest init or agent changed",
    "qemu": "the QEMU binary or its version changed",
    "accel": "the accelerator changed",
    "pyro_version": "pyro was upgraded",
    "format": "pyro's snapshot format changed",
}


@dataclass(frozen=True)
class WarmKey:
    """Everything a warm snapshot is only valid for."""

    environment: str
    build_id: str
    guest_files: str
    qemu: str
    accel: str
    vcpu_count: int
    mem_mib: int
    network: bool
    pyro_version: str
    format: int = SNAPSHOT_FORMAT

    @property
    def shape(self) -> str:
        return f"{self.vcpu_count}cpu-{self.mem_mib}m" + ("-net" if self.network else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Why a snapshot with key ``recorded`` does not fit this key (empty: it does)."""
        return [
            _CHANGED.get(name, f"{name} changed")
            for name, value in self.to_dict().items()
            if recorded.get(name) != value
        ]


def make_key(
    installed: InstalledEnvironment,
    qemu: Path,
    accel: str,
    vcpu_count: int,
    mem_mib: int,
    network: bool,
) -> WarmKey:
    from pyro_mcp.version import __version__

    return WarmKey(
        environment=installed.name,
        build_id=str(installed.manifest.get("build_id", installed.build_dir.name)),
        guest_files=installed.initrd.name,
        qemu=qemu_identity(qemu),
        accel=accel,
        vcpu_count=vcpu_count,
        mem_mib=mem_mib,
        network=network,
        pyro_version=__version__,
    )


def qemu_identity(qemu: Path) -> str:
    """The QEMU binary as a snapshot depends on it: version, size and change time."""
    try:
        stat = qemu.resolve().stat()
    except OSError:
        return f"{qemu} missing"
    return _qemu_identity(str(qemu.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _qemu_identity(path: str, size: int, mtime_ns: int) -> str:
    return f"{qemu_version(Path(path))} {path} {size}:{mtime_ns}"


@dataclass(frozen=True)
class WarmSnapshot:
    """One complete, checked warm snapshot."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def ram(self) -> Path:
        return self.directory / RAM

    @property
    def devices(self) -> Path:
        return self.directory / DEVICES

    @property
    def root_disk(self) -> Path:
        return self.directory / ROOT

    @property
    def workspace_disk(self) -> Path:
        return self.directory / WORKSPACE

    @property
    def baseline_disk(self) -> Path:
        return self.directory / BASELINE


@dataclass(frozen=True)
class WarmStatus:
    """Whether VMs of one key can start warm: ``warm``, ``cold`` or ``stale``."""

    status: str
    reason: str
    snapshot: WarmSnapshot | None
    prepared_at: str | None
    path: Path | None

    def to_dict(self) -> dict[str, Any]:
        manifest = self.snapshot.manifest if self.snapshot else {}
        return {
            "status": self.status,
            "reason": self.reason,
            "prepared_at": self.prepared_at,
            "path": str(self.path) if self.path else None,
            "bytes": manifest.get("bytes"),
            "proof": manifest.get("proof"),
        }


class WarmStore:
    """Finds, checks, writes and prunes warm snapshots under ``root`` (``cache_dir/warm``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def shape_dir(self, key: WarmKey) -> Path:
        return self.root / slug(key.environment) / key.shape

    # --------------------------------------------------------------- lookup

    def status(self, key: WarmKey, *, verify: bool = True) -> WarmStatus:
        """The current snapshot for ``key``, checked (sizes, hashes) before any use.

        Args:
            verify: hash the small files too (the RAM file's size and change time
                are always checked; hashing 1 GiB on every create would cost more
                than the boot it saves).
        """
        link = self.shape_dir(key) / "current"
        if not link.is_symlink():
            return WarmStatus("cold", "no warm snapshot yet", None, None, None)
        directory = link.resolve()
        manifest, problem = _read_manifest(directory)
        if manifest is None:
            return WarmStatus("stale", f"the warm snapshot is broken: {problem}", None, None, None)
        prepared_at = manifest.get("prepared_at")
        differences = key.differences(manifest.get("key") or {})
        if differences:
            return WarmStatus(
                "stale",
                "since the warm snapshot was taken, " + "; ".join(differences),
                None,
                prepared_at,
                directory,
            )
        problem = check_files(directory, manifest, verify_hashes=verify)
        if problem is not None:
            return WarmStatus(
                "stale", f"the warm snapshot is damaged: {problem}", None, prepared_at, directory
            )
        snapshot = WarmSnapshot(directory, manifest)
        return WarmStatus("warm", "a valid warm snapshot", snapshot, prepared_at, directory)

    # -------------------------------------------------------------- writing

    def lock(self, key: WarmKey) -> contextlib.AbstractContextManager[None]:
        """One writer per shape; a second waits, then finds the first's snapshot."""
        return self.lock_dir(self.shape_dir(key))

    @contextlib.contextmanager
    def lock_dir(self, shape: Path) -> Iterator[None]:
        shape.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (shape / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_partial(self, key: WarmKey) -> Path:
        """An empty directory to build a snapshot in (call under ``lock``).

        Partials of earlier, interrupted prepares are removed first: a partial
        is never used.
        """
        snapshots = self.shape_dir(key) / "snapshots"
        snapshots.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in snapshots.glob(".partial-*"):
            shutil.rmtree(old, ignore_errors=True)
        partial = snapshots / f".partial-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        partial.mkdir(mode=0o700)
        return partial

    def commit(self, key: WarmKey, partial: Path, extra: dict[str, Any]) -> WarmSnapshot:
        """Record the files' sizes and hashes, then make ``partial`` the current snapshot."""
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "key": key.to_dict(),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": describe_files(partial),
            "bytes": used_bytes(partial),
            **extra,
        }
        tmp = partial / "manifest.json.tmp"
        with tmp.open("w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(partial / "manifest.json")
        final = partial.with_name(partial.name.removeprefix(".partial-"))
        partial.rename(final)
        link = self.shape_dir(key) / "current"
        new_link = link.with_name(f".current-{uuid.uuid4().hex[:6]}")
        new_link.symlink_to(Path("snapshots") / final.name)
        new_link.replace(link)
        return WarmSnapshot(final, manifest)

    def estimate_bytes(self, key: WarmKey) -> int:
        """How much disk a new snapshot of this shape takes: the last one's size
        with room to spare, or a fixed guess for the first."""
        status = self.status(key, verify=False)
        last = (status.snapshot.manifest.get("bytes") if status.snapshot else None) or 0
        return max(int(last * 1.5), DEFAULT_SNAPSHOT_BYTES)

    # ---------------------------------------------------------------- prune

    def prune(self, still_valid: set[Path]) -> dict[str, Any]:
        """Remove every snapshot except the current ones listed in ``still_valid``.

        Warm VMs still running from a removed snapshot keep working: their
        mapping of its RAM file outlives the file's name.
        """
        keep = {path.resolve() for path in still_valid}
        removed: list[str] = []
        freed = 0
        if not self.root.is_dir():
            return {"removed": removed, "freed_bytes": freed}
        for shape in sorted(p for p in self.root.glob("*/*") if p.is_dir()):
            with (shape / ".lock").open("w") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a prepare is writing here right now
                try:
                    current = (
                        (shape / "current").resolve() if (shape / "current").exists() else None
                    )
                    for snapshot in sorted((shape / "snapshots").glob("*")):
                        if snapshot.resolve() in keep:
                            continue
                        freed += used_bytes(snapshot)
                        shutil.rmtree(snapshot, ignore_errors=True)
                        removed.append(str(snapshot))
                    if current is not None and current not in keep:
                        (shape / "current").unlink(missing_ok=True)
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        return {"removed": removed, "freed_bytes": freed}

    def remove_environment(self, environment: str) -> dict[str, Any]:
        """Remove every warm snapshot of ``environment`` (each shape under its
        lock, so a prepare writing one finishes first)."""
        env_dir = self.root / slug(environment)
        removed: list[str] = []
        freed = 0
        for shape in sorted(p for p in env_dir.glob("*") if p.is_dir()):
            with self.lock_dir(shape):
                freed += used_bytes(shape / "snapshots")
                removed += [str(snapshot) for snapshot in sorted(shape.glob("snapshots/*"))]
                shutil.rmtree(shape / "snapshots", ignore_errors=True)
                (shape / "current").unlink(missing_ok=True)
        shutil.rmtree(env_dir, ignore_errors=True)
        return {"removed": removed, "freed_bytes": freed}

    def current_snapshots(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every shape's current snapshot directory with its manifest (None: broken)."""
        found = []
        for link in sorted(self.root.glob("*/*/current")) if self.root.is_dir() else []:
            directory = link.resolve()
            found.append((directory, _read_manifest(directory)[0]))
        return found


def punch_zero_pages(path: Path) -> int:
    """Make every all-zero page of a RAM file a hole; the bytes given back.

    A template guest zeroes the memory it frees, all of RAM as it boots, so
    its RAM file comes out whole. Holes cost no disk, and a warm VM's saved
    memory is thinned against them without reading them (see ``thin.py``).
    """
    from pyro_mcp.vm.thin import PAGE_SIZE, data_extents

    fallocate = host_tools.libc().fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    zero_chunk = bytes(ZERO_SCAN_CHUNK)
    zero_page = bytes(PAGE_SIZE)
    freed = 0
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        runs: list[tuple[int, int]] = []
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as data:
            for start, end in data_extents(fd, size):
                for chunk in range(start, end, ZERO_SCAN_CHUNK):
                    stop = min(chunk + ZERO_SCAN_CHUNK, end)
                    if data[chunk:stop] == zero_chunk[: stop - chunk]:
                        _extend(runs, chunk, stop)
                        continue
                    for page in range(chunk, stop, PAGE_SIZE):
                        if data[page : page + PAGE_SIZE] == zero_page:
                            _extend(runs, page, page + PAGE_SIZE)
        for start, end in runs:
            if fallocate(fd, FALLOC_PUNCH_HOLE_KEEP_SIZE, start, end - start) != 0:
                raise OSError(ctypes.get_errno(), f"cannot punch holes in {path}")
            freed += end - start
    finally:
        os.close(fd)
    return freed


# fallocate(2): FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE.
FALLOC_PUNCH_HOLE_KEEP_SIZE = 0x01 | 0x02
ZERO_SCAN_CHUNK = 2 * 1024 * 1024


def _extend(runs: list[tuple[int, int]], start: int, end: int) -> None:
    if runs and runs[-1][1] == start:
        runs[-1] = (runs[-1][0], end)
    else:
        runs.append((start, end))


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for name in (RAM, DEVICES, ROOT, WORKSPACE, BASELINE):
        stat = (directory / name).stat()
        entry: dict[str, Any] = {"size": stat.st_size}
        if name in HASHED:
            entry["sha256"] = sha256_file(directory / name)
        else:
            entry["mtime_ns"] = stat.st_mtime_ns
        files[name] = entry
    return files


def check_files(directory: Path, manifest: dict[str, Any], *, verify_hashes: bool) -> str | None:
    """What is wrong with a snapshot's files, or None."""
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {RAM, DEVICES, ROOT, WORKSPACE, BASELINE}:
        return "its manifest does not list its files"
    for name, expected in files.items():
        path = directory / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != expected.get("size"):
            return f"{name} has the wrong size ({stat.st_size}, expected {expected.get('size')})"
        if "mtime_ns" in expected and stat.st_mtime_ns != expected["mtime_ns"]:
            return f"{name} was changed after the snapshot was taken"
        if verify_hashes and "sha256" in expected and sha256_file(path) != expected["sha256"]:
            return f"{name} is corrupted (hash mismatch)"
    return None


def _read_manifest(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        return None, "its manifest is missing"
    except (OSError, ValueError) as exc:
        return None, f"its manifest is unreadable ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        return None, "it was written by another pyro version"
    return manifest, None
