"""Installed environments: where they live, whether they are whole, repair and prune.

Layout under the cache dir::

    environments/debian-12/current -> builds/<build_id>     (symlink, swapped atomically)
    environments/debian-12/builds/<build_id>/manifest.json   (written last)
                                            vmlinuz rootfs.ext4 initrd-<guest hash>.img
    kernels/<package>_<version>/                              (shared by all environments)
    debs/                                                     (debootstrap download cache)

A build is written under ``builds/.partial-*`` and only becomes ``current``
after its manifest is written, so an interrupted build is never used: it is
left as a partial directory that the next build or ``pyro env prune`` removes.
Earlier builds stay until pruned because stopped VMs' overlays may still
reference their root image.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.environments import builder, images
from pyro_mcp.environments.catalog import CATALOG, EnvironmentSpec, get_spec, slug
from pyro_mcp.errors import EnvironmentBuildError, NotFound, PyroError, StateError
from pyro_mcp.names import check_environment, shown

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

log = logging.getLogger("pyro.environments")

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class InstalledEnvironment:
    """A whole, usable build of an environment."""

    name: str
    build_dir: Path
    manifest: dict[str, Any]

    @property
    def vmlinuz(self) -> Path:
        return self.build_dir / "vmlinuz"

    @property
    def rootfs(self) -> Path:
        """The root disk: raw ext4 (curated) or a qcow2 on shared layers (image)."""
        image = self.build_dir / "rootfs.qcow2"
        return image if image.is_file() else self.build_dir / "rootfs.ext4"

    @property
    def initrd(self) -> Path:
        return self.build_dir / f"initrd-{builder.guest_files_hash()}.img"

    @property
    def runtime(self) -> Path | None:
        """An image environment's runtime drive (``environments/runtime.py``)."""
        path = self.build_dir / "runtime.ext4"
        return path if path.is_file() else None


@dataclass(frozen=True)
class EnvironmentStatus:
    name: str
    description: str
    installed: bool
    problem: str | None
    build_dir: Path | None
    manifest: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        manifest = self.manifest or {}
        image = manifest.get("image") or {}
        return {
            "name": self.name,
            "kind": manifest.get("kind", "curated"),
            "description": self.description,
            "installed": self.installed,
            "problem": self.problem,
            "path": str(self.build_dir) if self.build_dir else None,
            "built_at": manifest.get("built_at"),
            "kernel": (manifest.get("kernel") or {}).get("version"),
            "source": image.get("reference"),
            "digest": image.get("manifest_digest"),
            "size_bytes": used_bytes(self.build_dir) if self.build_dir else 0,
        }


class EnvironmentCache:
    """Builds, checks, repairs and prunes environments under ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.environments_dir = cache_dir / "environments"
        self.kernels_dir = cache_dir / "kernels"
        self.debs_dir = cache_dir / "debs"

    # --------------------------------------------------------------- queries

    def status(self, name: str) -> EnvironmentStatus:
        check_environment("environment", name)
        if name not in CATALOG:
            return self._image_status(name)
        spec = get_spec(name)
        build_dir = self._current_build(spec)
        if build_dir is None:
            with _try_lock(self.environments_dir / spec.slug) as free:
                failure = self.last_failure(spec) if free else None
            if failure is not None:
                problem: str | None = f"the last build did not finish: {failure}"
            elif not free and (self.environments_dir / spec.slug).is_dir():
                problem = "being built right now"
            else:
                problem = None
            return EnvironmentStatus(name, spec.description, False, problem, None, None)
        manifest, problem = _read_manifest(build_dir)
        if problem is None and manifest is not None:
            problem = _check_files(build_dir, manifest, verify_hashes=False)
        return EnvironmentStatus(
            name, spec.description, problem is None, problem, build_dir, manifest
        )

    def describe(self, statuses: Sequence[EnvironmentStatus]) -> list[dict[str, Any]]:
        """``statuses`` as dicts; those with layer disks (pulled ones) also say
        how many layers they have, the bytes those take, and which layers other
        installed environments share (the disks exist once)."""
        chains = {
            status.name: [str(Path(path).resolve()) for path in chain]
            for status in self.list()
            if status.manifest and (chain := status.manifest.get("chain"))
        }
        described = []
        for status in statuses:
            info = status.to_dict()
            chain = chains.get(status.name)
            if chain:
                layers: list[dict[str, Any]] = []
                for disk in chain:
                    others = sorted(n for n, c in chains.items() if n != status.name and disk in c)
                    layers.append(
                        {"disk": disk, "bytes": used_bytes_file(Path(disk)), "shared_with": others}
                    )
                shared = [layer for layer in layers if layer["shared_with"]]
                info["layer_disks"] = layers
                info["layers_bytes"] = sum(layer["bytes"] for layer in layers)
                info["shared_layers"] = len(shared)
                info["shared_bytes"] = sum(layer["bytes"] for layer in shared)
                info["shared_with"] = sorted({n for layer in shared for n in layer["shared_with"]})
            described.append(info)
        return described

    def list(self) -> list[EnvironmentStatus]:
        return [self.status(name) for name in [*CATALOG, *self.image_names()]]

    def image_names(self) -> tuple[str, ...]:
        """The environments pulled from OCI images, by name."""
        names: tuple[str, ...] = ()
        if self.environments_dir.is_dir():
            for env_dir in sorted(self.environments_dir.iterdir()):
                build = env_dir / "current"
                manifest, _ = _read_manifest(build) if build.is_dir() else (None, None)
                if manifest and manifest.get("kind") == "image" and manifest.get("name"):
                    names += (str(manifest["name"]),)
        return names

    def inspect(self, name: str) -> dict[str, Any]:
        status = self.status(name)
        info = self.describe([status])[0]
        if name in CATALOG:
            spec = get_spec(name)
            info["catalog_packages"] = list(spec.packages)
            info["disk_size_mib"] = spec.disk_size_mib
        else:
            image = (status.manifest or {}).get("image") or {}
            info["disk_size_mib"] = image.get("disk_size_mib")
            info["image"] = image
        info["manifest"] = status.manifest
        return info

    def _image_status(self, name: str) -> EnvironmentStatus:
        """An environment pulled from an image; NotFound when none has this name."""
        check_environment("environment", name)
        build_dir = self._current_slug(slug(name))
        manifest, problem = _read_manifest(build_dir) if build_dir else (None, None)
        if build_dir is None or manifest is None or manifest.get("kind") != "image":
            curated = ", ".join(CATALOG)
            pulled = ", ".join(self.image_names()) or "none yet"
            raise NotFound(
                f"unknown environment {shown(name)}; curated: {curated}; pulled from images: "
                f"{pulled}. Pull an image with `pyro env pull REF --name {shown(name)}`"
            )
        if problem is None:
            problem = _check_files(build_dir, manifest, verify_hashes=False)
        source = (manifest.get("image") or {}).get("reference", "an OCI image")
        return EnvironmentStatus(
            name, f"from {source}", problem is None, problem, build_dir, manifest
        )

    def install_image(
        self,
        name: str,
        *,
        kernel: builder.Kernel,
        runtime: Path,
        chain: Sequence[Path],
        image: dict[str, Any],
        progress: builder.Progress,
        kind: str = "image",
    ) -> InstalledEnvironment:
        """Record an environment whose root disk is ``chain[-1]`` (layers shared, see
        ``environments/images.py``): a new build, made current when whole."""
        env_dir = self.environments_dir / slug(name)
        with self._lock_dir(env_dir):
            builds = env_dir / "builds"
            builds.mkdir(parents=True, exist_ok=True)
            _remove_partials(builds)
            build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
            partial = builds / f".partial-{build_id}"
            partial.mkdir()
            try:
                shutil.copy2(kernel.vmlinuz, partial / "vmlinuz")
                (partial / "modules").mkdir()
                for module in kernel.modules_dir.iterdir():
                    shutil.copy2(module, partial / "modules" / module.name)
                try:
                    os.link(runtime, partial / "runtime.ext4")
                except OSError:
                    shutil.copy2(runtime, partial / "runtime.ext4")
                rootfs = partial / "rootfs.qcow2"
                builder._run(
                    host_tools.QEMU_IMG,
                    ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", chain[-1], rootfs],
                    what="qemu-img create (root disk)",
                )
                os.chmod(rootfs, 0o444)
                progress("phase=initramfs packing busybox, virtio modules and the agent")
                builder.build_initramfs(
                    partial / "modules", partial / f"initrd-{builder.guest_files_hash()}.img"
                )
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "kind": kind,
                    "name": name,
                    "build_seconds": 0.0,
                    "build_id": build_id,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "kernel": {"package": kernel.package, "version": kernel.version},
                    "image": image,
                    "chain": [str(path) for path in chain],
                    "files": {
                        file: {
                            "size": (partial / file).stat().st_size,
                            "sha256": builder.sha256_file(partial / file),
                        }
                        for file in ("vmlinuz", "rootfs.qcow2", "runtime.ext4")
                    },
                }
                _write_json(partial / "manifest.json", manifest)
                final = builds / build_id
                partial.rename(final)
                self._set_current_dir(env_dir, final)
            except BaseException:
                _remove_build(partial)
                raise
        return InstalledEnvironment(name, final, manifest)

    # ---------------------------------------------------------------- builds

    def ensure(self, name: str, progress: builder.Progress) -> InstalledEnvironment:
        """A usable build of ``name``, building it first when needed (curated names)."""
        status = self.status(name)
        if not status.installed and name not in CATALOG:
            source = ((status.manifest or {}).get("image") or {}).get("reference", "REF")
            raise NotFound(
                f"environment {name} is damaged ({status.problem}); pull it again with "
                f"`pyro env pull {source} --name {name}`"
            )
        if not status.installed:
            return self.pull(name, progress)
        assert status.build_dir is not None and status.manifest is not None
        installed = InstalledEnvironment(name, status.build_dir, status.manifest)
        self.ensure_initrd(installed)
        return installed

    def pull(
        self, name: str, progress: builder.Progress, force: bool = False
    ) -> InstalledEnvironment:
        """Build ``name``, or verify it and rebuild if anything is wrong.

        Args:
            name: a catalog name.
            progress: receives one line per phase.
            force: rebuild even when the current build verifies.
        """
        spec = get_spec(name)
        with self._lock(spec):
            build_dir = self._current_build(spec)
            if build_dir is not None and not force:
                manifest, problem = _read_manifest(build_dir)
                if problem is None and manifest is not None:
                    progress(f"phase=verify checking {name} hashes")
                    problem = _check_files(build_dir, manifest, verify_hashes=True)
                if problem is None and manifest is not None:
                    installed = InstalledEnvironment(name, build_dir, manifest)
                    self.ensure_initrd(installed)
                    progress(f"phase=done {name} is installed and verified")
                    return installed
                progress(f"phase=repair {name}: {problem}; rebuilding")
            return self._build(spec, progress)

    def last_failure(self, spec: EnvironmentSpec) -> str | None:
        """How the last build of ``spec`` ended, if it failed or was interrupted."""
        builds = self.environments_dir / spec.slug / "builds"
        try:
            record = json.loads((self.environments_dir / spec.slug / FAILURE_FILE).read_text())
            return f"{record['error']} (phase {record['phase']}, {record['at']})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        partials = sorted(builds.glob(".partial-*")) if builds.is_dir() else []
        if partials:
            started = partials[-1].name.removeprefix(".partial-").split("-")[0]
            return f"a build started {started} was interrupted before it finished"
        return None

    def _build(self, spec: EnvironmentSpec, progress: builder.Progress) -> InstalledEnvironment:
        started = time.monotonic()
        env_dir = self.environments_dir / spec.slug
        builds = env_dir / "builds"
        builds.mkdir(parents=True, exist_ok=True)
        failure = self.last_failure(spec)
        if failure is not None:
            progress(f"phase=cleanup the last build of {spec.name} did not finish: {failure}")
            progress("phase=cleanup removing what it left; building again from the start")
        _remove_partials(builds)
        (env_dir / FAILURE_FILE).unlink(missing_ok=True)
        build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        partial = builds / f".partial-{build_id}"
        partial.mkdir()
        phase = ["start"]

        def tracked(message: str) -> None:
            if message.startswith("phase="):
                phase[0] = message.split()[0].removeprefix("phase=")
            progress(message)

        try:
            kernel = builder.fetch_kernel(self.kernels_dir, tracked)
            shutil.copy2(kernel.vmlinuz, partial / "vmlinuz")
            packages = builder.build_rootfs(
                spec,
                partial,
                partial / "rootfs.ext4",
                self.debs_dir,
                tracked,
                log=env_dir / BUILD_LOG,
            )
            tracked("phase=initramfs packing busybox, virtio modules and the agent")
            initrd = partial / f"initrd-{builder.guest_files_hash()}.img"
            builder.build_initramfs(kernel.modules_dir, initrd)
            (partial / "modules").mkdir()
            for module in kernel.modules_dir.iterdir():
                shutil.copy2(module, partial / "modules" / module.name)
            tracked("phase=manifest hashing images")
            os.chmod(partial / "rootfs.ext4", 0o444)
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": spec.name,
                "build_id": build_id,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": 0.0,
                "suite": spec.suite,
                "kernel": {"package": kernel.package, "version": kernel.version},
                "packages": packages,
                "files": {
                    name: {
                        "size": (partial / name).stat().st_size,
                        "sha256": builder.sha256_file(partial / name),
                    }
                    for name in ("vmlinuz", "rootfs.ext4")
                },
            }
            manifest["build_seconds"] = round(time.monotonic() - started, 1)
            _write_json(partial / "manifest.json", manifest)
            final = builds / build_id
            partial.rename(final)
            self._set_current(spec, final)
        except BaseException as exc:
            _remove_build(partial)
            _record_failure(env_dir, phase[0], exc)
            if isinstance(exc, PyroError) or not isinstance(exc, Exception):
                raise
            # Anything else is a fault of ours or of the host: still one error a user can act on.
            raise EnvironmentBuildError(
                f"building {spec.name} failed in phase {phase[0]}: {type(exc).__name__}: {exc}. "
                f"Nothing was installed; `pyro env pull {spec.name}` tries again from the start."
            ) from exc
        progress(f"phase=done {spec.name} built in {manifest['build_seconds']} s")
        return InstalledEnvironment(spec.name, final, manifest)

    def ensure_initrd(self, installed: InstalledEnvironment) -> None:
        """Rebuild the initramfs when pyro's init or agent changed (a second or so)."""
        if installed.initrd.is_file():
            return
        modules = installed.build_dir / "modules"
        if not modules.is_dir():
            raise EnvironmentBuildError(
                f"{installed.name} build has no kernel modules; run `pyro env pull "
                f"{installed.name} --force`"
            )
        # Older initramfs files stay: another pyro process (or version) sharing
        # this cache may be about to boot one. `pyro env prune` removes them.
        builder.build_initramfs(modules, installed.initrd)

    # ----------------------------------------------------------------- prune

    def prune(
        self, remove_installed: bool = False, keep_builds: set[Path] | None = None
    ) -> dict[str, Any]:
        """Remove partial builds, superseded builds, unused kernels and download caches.

        Args:
            remove_installed: also remove the current builds (everything).
            keep_builds: build directories still referenced by VMs; never removed.
        """
        keep = {p.resolve() for p in keep_builds or set()}
        removed: list[str] = []
        freed = 0
        if self.environments_dir.is_dir():
            for env_dir in sorted(self.environments_dir.iterdir()):
                with _try_lock(env_dir) as locked:
                    if not locked:
                        continue  # being built right now: its partial build is not debris
                    current = (
                        (env_dir / "current").resolve() if (env_dir / "current").exists() else None
                    )
                    builds = env_dir / "builds"
                    for build in sorted(builds.iterdir()) if builds.is_dir() else []:
                        resolved = build.resolve()
                        if resolved in keep:
                            continue
                        if resolved == current and not remove_installed:
                            removed += _prune_initrds(build)
                            continue
                        if (freed_here := _remove_build(build)) is not None:
                            freed += freed_here
                            removed.append(str(build))
                    if remove_installed and current is not None and current not in keep:
                        (env_dir / "current").unlink(missing_ok=True)
        for path in (self.debs_dir, self.kernels_dir):
            if path.is_dir():
                freed += used_bytes(path)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        more, freed_images = _prune_images(self.cache_dir)
        return {"removed": removed + more, "freed_bytes": freed + freed_images}

    def remove(self, name: str) -> dict[str, Any]:
        """Remove environment ``name``: every build of it, then the layer disks and
        image blobs no other environment names. Callers make sure nothing uses it.

        Raises:
            NotFound: ``name`` is not installed (the message lists what is).
            StateError: another environment is built on one of its files.
        """
        status = self.status(name)
        if status.build_dir is None:
            raise NotFound(
                f"environment {shown(name)} is not installed; installed: "
                f"{', '.join(self.installed_names()) or 'none'}"
            )
        env_dir = self.environments_dir / slug(name)
        inside = env_dir.resolve()
        for other in self.list():
            chain = (other.manifest or {}).get("chain") or []
            if other.name != name and any(Path(p).resolve().is_relative_to(inside) for p in chain):
                raise StateError(
                    f"environment {name}",
                    f"what {other.name} is built on",
                    "unused",
                    f"Remove {other.name} first: pyro env rm {other.name}",
                )
        removed: list[str] = []
        freed = 0
        with self._lock_dir(env_dir):
            for build in sorted((env_dir / "builds").glob("*")):
                if (freed_here := _remove_build(build)) is None:
                    raise StateError(str(build), "still mounted", "unmounted", "Run `pyro doctor`.")
                freed += freed_here
                removed.append(str(build))
            (env_dir / "current").unlink(missing_ok=True)
            (env_dir / FAILURE_FILE).unlink(missing_ok=True)
            (env_dir / BUILD_LOG).unlink(missing_ok=True)
        shutil.rmtree(env_dir, ignore_errors=True)
        more, freed_images = _prune_images(self.cache_dir)
        return {"removed": removed + more, "freed_bytes": freed + freed_images}

    def installed_names(self) -> tuple[str, ...]:
        return tuple(status.name for status in self.list() if status.build_dir is not None)

    # --------------------------------------------------------------- helpers

    def _current_build(self, spec: EnvironmentSpec) -> Path | None:
        return self._current_slug(spec.slug)

    def _current_slug(self, env_slug: str) -> Path | None:
        link = self.environments_dir / env_slug / "current"
        if not link.is_symlink():
            return None
        target = link.resolve()
        return target if target.is_dir() else None

    def _set_current(self, spec: EnvironmentSpec, build: Path) -> None:
        self._set_current_dir(self.environments_dir / spec.slug, build)

    def _set_current_dir(self, env_dir: Path, build: Path) -> None:
        link = env_dir / "current"
        tmp = link.with_name(f".current-{uuid.uuid4().hex[:6]}")
        tmp.symlink_to(Path("builds") / build.name)
        tmp.replace(link)

    @contextmanager
    def _lock(self, spec: EnvironmentSpec) -> Iterator[None]:
        with self._lock_dir(self.environments_dir / spec.slug):
            yield

    @contextmanager
    def _lock_dir(self, env_dir: Path) -> Iterator[None]:
        """One builder per environment; a second waits and then finds it built."""
        env_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (env_dir / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _try_lock(env_dir: Path) -> Iterator[bool]:
    """The environment's build lock if nobody holds it (True), without waiting."""
    with _try_lock_file(env_dir / ".lock") as free:
        yield free


def _prune_images(cache_dir: Path) -> tuple[list[str], int]:
    """Layer disks and image blobs no build still names (a build that VMs use
    is still there, so what it names stays); nothing while a pull or push runs
    (they hold ``images.USERS_LOCK`` shared from the first fetch to the install)."""
    disks: set[str] = set()
    blobs: set[str] = set()
    for manifest_path in (cache_dir / "environments").glob("*/builds/*/manifest.json"):
        manifest, _ = _read_manifest(manifest_path.parent)
        if not manifest or manifest.get("kind") != "image":
            continue
        disks.update(str(Path(path).resolve()) for path in manifest.get("chain") or [])
        image = manifest.get("image") or {}
        blobs.update(str(image.get(key)) for key in ("manifest_digest", "config_digest"))
        blobs.update(str(layer.get("digest")) for layer in image.get("layers") or [])
    removed: list[str] = []
    freed = 0
    with _try_lock_file(cache_dir / images.USERS_LOCK) as idle:
        if idle:  # no pull or push is between making a disk or blob and recording it
            freed += _prune_unnamed(cache_dir, disks, blobs, removed)
    return removed, freed


def _prune_unnamed(cache_dir: Path, disks: set[str], blobs: set[str], removed: list[str]) -> int:
    freed = 0
    layers_dir = cache_dir / "layers"
    for size_dir in sorted(layers_dir.iterdir()) if layers_dir.is_dir() else []:
        with _try_lock_file(size_dir / ".build.lock") as free:
            if not free:
                continue  # an image is being built on these disks right now
            kept = 0
            for disk in sorted(size_dir.glob("*.qcow2")) + sorted(size_dir.glob(".*.qcow2")):
                if str(disk.resolve()) in disks:
                    kept += 1
                    continue
                freed += used_bytes_file(disk)
                disk.unlink(missing_ok=True)
                disk.with_suffix(".json").unlink(missing_ok=True)
                removed.append(str(disk))
            # The bottoms of the chains (empty.ext4, a curated root a build started
            # from): kept while any disk here is.
            for bottom in sorted(size_dir.glob("*.ext4")) if not kept else []:
                freed += used_bytes_file(bottom)
                bottom.unlink()
                removed.append(str(bottom))
            # What a killed pull left: unpacked layers and the building guest's blobs.
            for leftover in [*size_dir.glob(".unpacked-*"), *size_dir.glob("pyro-layers-*")]:
                freed += used_bytes(leftover)
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(str(leftover))
    blob_dir = cache_dir / "oci" / "blobs" / "sha256"
    with _try_lock_file(cache_dir / "oci.lock") as free:
        for blob in sorted(blob_dir.iterdir()) if free and blob_dir.is_dir() else []:
            if f"sha256:{blob.name}" not in blobs:
                freed += used_bytes_file(blob)
                blob.unlink(missing_ok=True)
                removed.append(str(blob))
    return freed


@contextmanager
def _try_lock_file(path: Path) -> Iterator[bool]:
    """``path``'s lock if nobody holds it (True), without waiting; False if absent."""
    if not path.parent.is_dir():
        yield False
        return
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def used_bytes_file(path: Path) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def _read_manifest(build_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = build_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "manifest missing (interrupted build)"
    except (OSError, ValueError) as exc:
        return None, f"manifest unreadable: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None, "manifest from another pyro version"
    return manifest, None


def _check_files(build_dir: Path, manifest: dict[str, Any], verify_hashes: bool) -> str | None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest lists no files"
    for layer_disk in manifest.get("chain") or []:
        if not Path(layer_disk).is_file():
            return f"its layer disk {layer_disk} is missing (pruned?)"
    for name, expected in files.items():
        path = build_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has the wrong size"
        if verify_hashes and builder.sha256_file(path) != expected.get("sha256"):
            return f"{name} is corrupted (hash mismatch)"
    return None


def _prune_initrds(build: Path) -> list[str]:
    """Initramfs files of other pyro versions, and leftovers of interrupted writes."""
    current = f"initrd-{builder.guest_files_hash()}.img"
    removed = []
    for path in build.glob("initrd-*"):
        if path.name != current:
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


FAILURE_FILE = "last-failure.json"
BUILD_LOG = "last-build.log"  # debootstrap's output, kept after a failure


def _record_failure(env_dir: Path, phase: str, exc: BaseException) -> None:
    """Kept beside the builds so the next pull (and `env list`) can say what happened."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc).splitlines()
    error = reason if isinstance(reason, str) else (reason[0] if reason else type(exc).__name__)
    record = {"phase": phase, "error": error[:300], "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):
        _write_json(env_dir / FAILURE_FILE, record)


def _remove_partials(builds: Path) -> None:
    for partial in builds.glob(".partial-*"):
        _remove_build(partial)


def _remove_build(build: Path) -> int | None:
    """Remove a build directory, first unmounting what debootstrap mounted in it;
    the bytes freed, or None if it had to stay.

    debootstrap mounts ``proc`` and ``sys`` inside the root it builds and
    unmounts them when it exits, but not when it is killed. Removing (or
    measuring) the tree with those still mounted would descend into the
    host's live filesystems; what cannot be unmounted leaves the build in place.
    """
    for target in sorted(_mounts_below(build), key=len, reverse=True):
        if host_tools.libc().umount2(target.encode(), MNT_DETACH) != 0:
            error = os.strerror(ctypes.get_errno())
            log.warning("cannot unmount %s (%s); leaving %s in place", target, error, build)
    if _mounts_below(build):
        return None
    freed = used_bytes(build)
    shutil.rmtree(build, ignore_errors=True)
    return freed


MNT_DETACH = 2


def _mounts_below(path: Path) -> list[str]:
    """Mount points strictly inside ``path`` (from /proc/self/mounts)."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [_unescape(line.split()[1]) for line in lines if len(line.split()) > 1]
    return [point for point in points if point.startswith(prefix)]


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def used_bytes(path: Path) -> int:
    """Bytes actually allocated (images are sparse)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def require_installed(cache: EnvironmentCache, name: str) -> InstalledEnvironment:
    """The installed build of ``name`` or a NotFound saying how to get it."""
    status = cache.status(name)
    if not status.installed:
        reason = f" ({status.problem})" if status.problem else ""
        raise NotFound(f"environment {name} is not installed{reason}; run `pyro env pull {name}`")
    assert status.build_dir is not None and status.manifest is not None
    return InstalledEnvironment(name, status.build_dir, status.manifest)
