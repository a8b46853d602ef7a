"""Making an image environment's root disk: the layers applied in a guest.

The building guest boots from the runtime drive (``environments/runtime.py``)
through a throwaway overlay, so it has Python, GNU tar and zstd whatever the
image holds. The disk being built is its /workspace drive: a qcow2 over the
longest chain of layers already built (or over an empty ext4). The layer blobs
come in read-only on the baseline drive. The guest applies them one by one as
root (``guest/layers.py``), flushes and freezes the filesystem, and the host
stops it. Nothing of the image runs.

The one exception: an image's first layer, on an empty disk, needs no
whiteouts or type checks, so when pyro runs as root the host unpacks it
itself (``_first_layer_on_host``: GNU tar into a private folder, then
``mkfs.ext4 -d``), several times faster than tar under emulation; a
single-layer image then starts no guest at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pyro_mcp import config, host_tools
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.egress import config as egress_config
from pyro_mcp.egress.config import EgressConfig
from pyro_mcp.environments import builder, images, runtime
from pyro_mcp.environments.cache import EnvironmentCache, InstalledEnvironment
from pyro_mcp.environments.catalog import CATALOG
from pyro_mcp.errors import HostSetupError, InvalidArgument, NotFound, PyroError, VMError
from pyro_mcp.guest import layers as guest_layers
from pyro_mcp.vm import backend, control_ops, disks, warm_builder
from pyro_mcp.vm.files import VmFiles
from pyro_mcp.vm.qemu import MachineSpec

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

BOOT_TIMEOUT_SECONDS = 120
RESTORE_TIMEOUT_SECONDS = 60  # ~130 MB of state to load, on a host that may be busy
# What a building guest with egress gets before its first step (the caller's:
# the host's CA bundle and package index settings).
GuestSetup = Callable[[SupervisorClient], None]
ENTRIES_PER_CALL = 20_000


def build_disk(
    *,
    vms_dir: Path,
    accel_name: str,
    kernel: Path,
    initrd: Path,
    runtime: Path,
    base: Path,
    targets: list[Path],
    unpacked: Path,
    layers: list[images.Layer],
    progress: images.Progress,
    warm_from: tuple[Path, str] | None = None,
) -> None:
    """Write ``targets``, one new qcow2 per layer, each over the one before (the
    first over ``base``), with ``layers`` applied: target N holds the image up
    to layer N and nothing more, so an image sharing that prefix can start from
    it. Their plain tars, named by digest, are in ``unpacked``.

    One guest applies them all: after each layer it freezes its disk and QEMU
    moves the drive onto the next target (the disk split a fork uses).

    Raises:
        ImageError: a layer could not be applied (the guest's tar output says why).
        VMError: the building guest did not start.
    """
    made: list[Path] = []
    try:
        with contextlib.ExitStack() as cleanup:
            if base.name == images.EMPTY_BASE and _first_layer_on_host(
                base, unpacked, layers[0], targets[0], len(layers), progress
            ):
                made.append(targets[0])
                base, layers, targets = targets[0], layers[1:], targets[1:]
                if not layers:
                    return
            blobs, places = images.blobs_raw(unpacked, layers)
            cleanup.callback(blobs.unlink, missing_ok=True)
            disks.create_overlay(base, targets[0])
            made.append(targets[0])
            progress(f"phase=layers starting a guest to apply {len(layers)} layer(s)")
            with builder_guest(
                vms_dir,
                accel_name,
                kernel,
                initrd,
                runtime,
                targets[0],
                blobs,
                warm_from=warm_from,
                progress=progress,
                baseline_raw=True,
            ) as client:
                for number, (layer, target) in enumerate(zip(layers, targets, strict=True), 1):
                    if made[-1] != target:
                        guest.freeze(client, True)
                        disks.create_overlay(made[-1], target)
                        control_ops.split(client, [[str(made[-1]), str(target)]])
                        made.append(target)
                        guest.freeze(client, False)
                    progress(
                        f"phase=layers applying {number}/{len(layers)} {layer.digest[:19]} "
                        f"({layer.unpacked_bytes // 2**20} MiB)"
                    )
                    # Nothing lies below the first layer on an empty disk: no
                    # type checks, no whiteouts to honour.
                    empty = number == 1 and base.name == images.EMPTY_BASE
                    _apply(client, layer, places[layer.hex], checks=not empty)
    except PyroError as exc:
        for target in made:
            target.unlink(missing_ok=True)
        if isinstance(exc, images.ImageError | VMError):
            raise
        raise images.ImageError(f"applying the image's layers failed: {exc}") from exc
    except BaseException:
        for target in made:
            target.unlink(missing_ok=True)
        raise


def _first_layer_on_host(
    base: Path,
    unpacked: Path,
    layer: images.Layer,
    target: Path,
    count: int,
    progress: images.Progress,
) -> bool:
    """``target``: ``layer`` (the first, on the empty ``base``) made on the host,
    when ``config.layers_on_host()``; False (and nothing left behind) when it was
    not, so the guest does it.

    The layer is untrusted, and unpacked as root: into a folder inside the
    private (0700) ``unpacked`` folder, by GNU tar, which strips leading ``/``,
    skips names with ``..`` and makes a symlink whose target is absolute or
    climbs out only after everything else (so nothing is written through one);
    no file of it is opened but by ``mkfs.ext4 -d``, which never follows links.
    """
    if not config.layers_on_host():
        return False
    tar_file = unpacked / layer.hex
    tree, raw = unpacked / "first-layer", unpacked / "first-layer.ext4"
    size_mib = base.stat().st_size // 2**20
    progress(
        f"phase=layers unpacking 1/{count} {layer.digest[:19]} "
        f"({layer.unpacked_bytes // 2**20} MiB) on the host"
    )
    unpack: list[str | os.PathLike[str]] = [
        "--extract",
        "--file",
        tar_file,
        "--directory",
        tree,
        *guest_layers.TAR_KEEPS,
    ]
    mkfs: list[str | os.PathLike[str]] = [
        "-q",
        "-F",
        "-L",
        "pyro-root",
        "-E",
        "root_owner=0:0",
        "-d",
        tree,
        raw,
        f"{size_mib}M",
    ]
    convert: list[str | os.PathLike[str]] = ["convert", "-q", "-O", "qcow2", raw, target]
    steps = [
        (host_tools.TAR, unpack),
        (host_tools.MKFS_EXT4, mkfs),
        (host_tools.QEMU_IMG, convert),
    ]
    try:
        tree.mkdir()
        os.chmod(tree, 0o755)  # the image root's mode unless the layer sets it
        for tool, args in steps:
            try:
                done = host_tools.run(tool, args, capture_output=True)
                output = (done.stdout + done.stderr).strip().splitlines()
                failure = "" if done.returncode == 0 else " ".join(output[-3:])[:300]
            except HostSetupError as exc:
                failure = str(exc)
            if failure:
                progress(
                    f"phase=layers {tool.command} on the host failed ({failure}); "
                    "the building guest applies the layer instead"
                )
                target.unlink(missing_ok=True)
                return False
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        raw.unlink(missing_ok=True)
    tar_file.unlink()
    return True


def builder_parts(
    cache: EnvironmentCache, progress: images.Progress
) -> tuple[builder.Kernel, Path, Path]:
    """What a building guest boots: the kernel, the runtime drive, the initramfs."""
    kernel = builder.fetch_kernel(cache.kernels_dir, progress)
    runtime_image = runtime.ensure_runtime(cache.cache_dir, progress)
    initrd = runtime_image.parent / f"initrd-{builder.guest_files_hash()}.img"
    if not initrd.is_file():
        builder.build_initramfs(kernel.modules_dir, initrd)
    return kernel, runtime_image, initrd


@contextlib.contextmanager
def builder_guest(
    vms_dir: Path,
    accel_name: str,
    kernel: Path,
    initrd: Path,
    runtime: Path,
    workspace: Path,
    baseline: Path,
    egress: EgressConfig | None = None,
    setup: GuestSetup | None = None,
    warm_from: tuple[Path, str] | None = None,
    progress: images.Progress = lambda _: None,
    baseline_raw: bool = False,
) -> Iterator[SupervisorClient]:
    """A guest booted from ``runtime`` (through a throwaway overlay), ``workspace``
    mounted writable and ``baseline`` read-only, owned by this process; its
    /workspace is flushed and frozen before it stops. With ``egress``, it has a
    NIC that reaches only pyro's egress proxy, under those rules, and ``setup``
    (the host's CAs and package index, as a workspace gets them) runs first.

    ``warm_from`` (the cache folder and the kernel's version) restores the warm
    building guest of that cache (``vm/warm_builder.py``; taken first when
    missing) instead of booting; a restore that fails boots cold. A
    ``baseline_raw`` drive is read as it is (``images.blobs_raw``), not mounted."""
    files = VmFiles(vms_dir / f"image-build-{uuid.uuid4().hex[:10]}")
    files.dir.mkdir(parents=True, mode=0o700)
    pid = None
    try:
        machine = _builder_machine(accel_name, kernel, initrd, files, workspace, baseline)
        if egress is not None:
            egress_config.write(files.dir, egress)
            machine = dataclasses.replace(
                machine, network=True, egress_command=egress_config.relay_command()
            )
        hello = {"mounts": {"workspace": True, "baseline": not baseline_raw}}
        report = _start(files, machine, runtime, warm_from, progress, hello)
        pid = int(report["pid"])
        with SupervisorClient(files.control_socket) as client:
            control_ops.own(client)
            if setup is not None and egress is not None:
                setup(client)
            yield client
            guest.freeze(client, True)  # flushed and consistent before the VM stops
    finally:
        if pid is not None:
            backend.stop(files, pid)
        shutil.rmtree(files.dir, ignore_errors=True)


def _start(
    files: VmFiles,
    machine: MachineSpec,
    runtime: Path,
    warm_from: tuple[Path, str] | None,
    progress: images.Progress,
    hello: dict[str, Any],
) -> dict[str, Any]:
    """The building guest running, its drives mounted: restored warm where it can
    be, booted otherwise."""
    if warm_from is not None:
        snapshots = warm_builder.store(warm_from[0])
        key = warm_builder.key(machine, runtime, warm_from[1])
        made = warm_builder.snapshot(snapshots, machine, runtime, key, progress)
        if made is not None:
            try:
                report = warm_builder.launch(files, machine, made, hello, RESTORE_TIMEOUT_SECONDS)
                progress(f"phase=warm building guest restored in {report['boot_ms']} ms")
                return report
            except VMError as exc:
                warm_builder.forget(snapshots, key)
                progress(f"phase=warm the warm building guest did not restore ({exc}); booting")
                for leftover in files.dir.iterdir():  # all but the egress settings
                    if leftover.name != egress_config.EGRESS_FILE:
                        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    disks.create_overlay(runtime, files.root_disk)
    report = backend.launch(files, machine, BOOT_TIMEOUT_SECONDS, owner_bound=True, hello=hello)
    progress(f"phase=boot building guest booted in {report['boot_ms']} ms")
    return report


def _apply(
    client: SupervisorClient, layer: images.Layer, place: tuple[int, int], *, checks: bool
) -> None:
    """``layer``, at ``place`` (offset, size) on the raw blobs drive, onto /workspace;
    ``checks``: remove what it deletes or replaces below it first."""
    known = layer.conflicts if layer.conflicts is not None else layer.entries
    entries = [[path, is_dir] for path, is_dir in known] if checks else []
    where = {"blob": layer.hex, "offset": place[0], "size": place[1]}
    # The type checks of a large layer go first, in parts (each request is one frame).
    while len(entries) > ENTRIES_PER_CALL:
        part, entries = entries[:ENTRIES_PER_CALL], entries[ENTRIES_PER_CALL:]
        guest.layer_apply(client, {**where, "entries": part, "extract": False})
    args = {**where, "entries": entries}
    if checks:
        args.update(remove=layer.remove, opaque=layer.opaque)
    guest.layer_apply(client, args)


def pull_image(
    cache: EnvironmentCache,
    *,
    vms_dir: Path,
    accel_name: str,
    reference: str,
    name: str | None,
    insecure_registry: bool,
    disk_size_mib: int,
    progress: images.Progress,
    curated: bool = False,
) -> InstalledEnvironment:
    """Fetch ``reference`` and install it as environment ``name`` (default: from the
    reference); ``curated``: as that curated environment (from
    ``PYRO_ENVIRONMENT_REGISTRY``). Nothing is installed unless every step succeeds."""
    ref = images.parse_reference(reference)
    env_name = images.check_name(name or ref.default_name)
    if env_name in CATALOG and not curated:
        raise InvalidArgument(
            "name", f"{env_name} is a curated environment; name the image with --name"
        )
    if not 256 <= disk_size_mib <= 262_144:
        raise InvalidArgument("disk_size_mib", "must be from 256 to 262144 MiB")
    store = images.ImageStore(cache.cache_dir)
    try:
        with store.in_use():
            return _pull(
                cache,
                store,
                ref,
                env_name,
                vms_dir,
                accel_name,
                insecure_registry,
                disk_size_mib,
                progress,
                curated,
            )
    except (PyroError, OSError) as exc:
        # Whatever failed first (skopeo, gunzip, the guest's writes, the install),
        # a full disk is the cause to name.
        if images.low_on_space(cache.cache_dir) or getattr(exc, "errno", None) == errno.ENOSPC:
            raise images.disk_full(cache.cache_dir) from exc
        raise


def _pull(
    cache: EnvironmentCache,
    store: images.ImageStore,
    ref: images.Reference,
    env_name: str,
    vms_dir: Path,
    accel_name: str,
    insecure_registry: bool,
    disk_size_mib: int,
    progress: images.Progress,
    curated: bool,
) -> InstalledEnvironment:
    reference = ref.text
    image = store.fetch(ref, progress, insecure=insecure_registry)
    if not image.layers:
        raise images.ImageError(f"{reference} has no layers")
    kernel, runtime_image, initrd = builder_parts(cache, progress)

    def check_room(needed_bytes: int) -> None:
        needed_mib = needed_bytes * 12 // 10 // 2**20 + 64
        if needed_mib > disk_size_mib:
            raise images.ImageError(
                f"{reference} needs about {needed_mib} MiB unpacked and the environment disk "
                f"is {disk_size_mib} MiB; pass --disk-size-mib {needed_mib * 2} (disk_size_mib=)"
            )

    chain = _build_chain(
        store,
        disk_size_mib,
        image.layers,
        lambda base, targets, todo, unpacked: build_disk(
            vms_dir=vms_dir,
            accel_name=accel_name,
            kernel=kernel.vmlinuz,
            initrd=initrd,
            runtime=runtime_image,
            base=base,
            targets=targets,
            unpacked=unpacked,
            layers=todo,
            progress=progress,
            warm_from=(cache.cache_dir, kernel.version),
        ),
        check_room,
        progress,
    )
    info = {
        "reference": reference,
        "source": ref.source,
        "manifest_digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "disk_size_mib": disk_size_mib,
        "layers": [
            {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "size": layer.size,
                "unpacked_bytes": layer.unpacked_bytes,
            }
            for layer in image.layers
        ],
        "settings": images.image_settings(image.config),
    }
    installed = cache.install_image(
        env_name,
        kernel=kernel,
        runtime=runtime_image,
        chain=chain,
        image=info,
        progress=progress,
        kind="curated" if curated else "image",
    )
    progress(f"phase=done {env_name} installed from {reference}")
    return installed


def _build_chain(
    store: images.ImageStore,
    size_mib: int,
    layers: list[images.Layer],
    build: Callable[[Path, list[Path], list[images.Layer], Path], None],
    check_room: Callable[[int], None],
    progress: images.Progress,
) -> list[Path]:
    """The layer disks from the bottom up, one per layer, the last holding them all.

    Each disk is named by its layer's chain ID, so any image with the same
    layers below shares it. The longest prefix already built is reused; only
    the layers after it are checked (``ImageStore.examine``) and applied. A
    disk counts once its record (``.json``: parent, unpacked bytes) is written,
    which happens bottom up after the whole build succeeded.
    """
    layers_dir = store.layers_dir
    base = images.empty_base(layers_dir, size_mib)
    folder = base.parent
    with (folder / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second reuses the first's
        sweep(folder, progress)
        done = 0
        for index in range(len(layers), 0, -1):
            if built(images.chain_disk(layers_dir, size_mib, layers[index - 1].chain_id)):
                done = index
                break
        final = images.chain_disk(layers_dir, size_mib, layers[-1].chain_id)
        if done == len(layers):
            progress(f"phase=layers all {done} layers already on disk, shared")
            return chain_of(final)
        below, below_bytes = base, 0
        if done:
            below = images.chain_disk(layers_dir, size_mib, layers[done - 1].chain_id)
            below_bytes = _record(below).get("unpacked_bytes", 0)
            progress(f"phase=layers {done} of {len(layers)} layers already on disk, shared")
        todo = layers[done:]
        targets = [images.chain_disk(layers_dir, size_mib, layer.chain_id) for layer in todo]
        with tempfile.TemporaryDirectory(prefix=".unpacked-", dir=folder) as tmp:
            for number, layer in enumerate(todo, done + 1):
                progress(f"phase=check layer {number}/{len(layers)} {layer.digest[:19]}")
                store.examine(layer, Path(tmp) / layer.hex)
                check_room(below_bytes + sum(item.unpacked_bytes for item in todo))
            if not done:  # every layer below each one is known here
                images.settle_conflicts(todo)
            build(below, targets, todo, Path(tmp))
        parent, total = (below if done else None), below_bytes
        for layer, disk in zip(todo, targets, strict=True):
            os.chmod(disk, 0o444)
            total += layer.unpacked_bytes
            write_record(disk, parent, total)
            parent = disk
        return chain_of(final)


def write_record(disk: Path, parent: Path | None, unpacked_bytes: int) -> None:
    """``disk``'s record: what it is backed by; once written, the disk counts."""
    record = disk.with_name(f".{disk.stem}.json.tmp")
    record.write_text(
        json.dumps({"parent": str(parent) if parent else None, "unpacked_bytes": unpacked_bytes})
    )
    os.replace(record, disk.with_suffix(".json"))


def built(disk: Path) -> bool:
    return disk.is_file() and disk.with_suffix(".json").is_file()


def sweep(folder: Path, progress: images.Progress) -> None:
    """Remove what a killed build left in ``folder`` (called under its build lock,
    so no live build owns any of it): layer disks without their record,
    unpacked layers, the building guest's blob image."""
    leftovers = [
        *(disk for disk in folder.glob("*.qcow2") if not built(disk)),
        *folder.glob(".*.qcow2"),
        *folder.glob(".*.json.tmp"),
        *folder.glob(".unpacked-*"),
        *folder.glob("pyro-layers-*"),
    ]
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if leftovers:
        progress(f"phase=layers removed {len(leftovers)} item(s) an interrupted pull or build left")


def _record(disk: Path) -> dict[str, Any]:
    try:
        record = json.loads(disk.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def chain_of(disk: Path) -> list[Path]:
    chain = [disk]
    while True:
        parent = _record(chain[-1]).get("parent")
        if not parent:
            return list(reversed(chain))
        chain.append(Path(parent))


def push_environment(
    cache: EnvironmentCache,
    *,
    vms_dir: Path,
    accel_name: str,
    name: str,
    target: str,
    insecure_registry: bool,
    progress: images.Progress,
) -> dict[str, Any]:
    """Write environment ``name`` to ``target`` (a registry or an OCI layout/archive)
    as an OCI image; pulling it back gives the same manifest digest."""
    status = cache.status(name)
    if not status.installed or status.build_dir is None or status.manifest is None:
        raise NotFound(f"environment {name} is not installed; run `pyro env pull {name}` first")
    images.destination(target, insecure=insecure_registry)  # a bad target fails before work
    store = images.ImageStore(cache.cache_dir)
    image = status.manifest.get("image") or {}
    digest = str(image.get("manifest_digest") or "")
    with store.in_use():
        if not digest or not store.blob(digest).is_file():
            digest = _curated_image(cache, status.build_dir, name, vms_dir, accel_name, progress)
        images.push(store, digest, target, progress, insecure=insecure_registry)
    progress(f"phase=done {name} pushed to {target} as {digest}")
    return {"name": name, "reference": target, "manifest_digest": digest}


def _curated_image(
    cache: EnvironmentCache,
    build_dir: Path,
    name: str,
    vms_dir: Path,
    accel_name: str,
    progress: images.Progress,
) -> str:
    """An OCI image of a curated build's root filesystem (one layer), made once
    per build and recorded beside it (``oci.json``); its manifest digest."""
    record = build_dir / "oci.json"
    store = images.ImageStore(cache.cache_dir)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        digest = str(json.loads(record.read_text()).get("manifest_digest"))
        if store.blob(digest).is_file():
            return digest
    manifest = json.loads((build_dir / "manifest.json").read_text())
    kernel, runtime_image, initrd = builder_parts(cache, progress)
    rootfs = build_dir / "rootfs.ext4"
    size_mib = max(1024, rootfs.stat().st_blocks * 512 * 3 // 2**20 // 2 + 256)
    store.layout.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyro-export-", dir=store.layout.parent) as tmp:
        work = Path(tmp)
        scratch_base = work / "scratch.ext4"
        builder._run(
            host_tools.MKFS_EXT4,
            ["-q", "-F", scratch_base, f"{size_mib}M"],
            what="mkfs.ext4 (scratch)",
        )
        scratch = work / "scratch.qcow2"
        progress(f"phase=export packing {name}'s root filesystem as one layer, in a guest")
        disks.create_overlay(scratch_base, scratch)
        with builder_guest(
            vms_dir,
            accel_name,
            kernel.vmlinuz,
            initrd,
            runtime_image,
            scratch,
            rootfs,
            warm_from=(cache.cache_dir, kernel.version),
            progress=progress,
        ) as client:
            argv = ["tar", "--create", "--file", "/workspace/layer.tar"]
            argv += ["--directory", "/run/pyro/baseline", "--numeric-owner", "--sort=name"]
            argv += ["--xattrs", "--xattrs-include=*", "--format=posix"]
            argv += ["--pax-option=delete=atime,delete=ctime", "--exclude=./lost+found", "."]
            done = guest.exec_command(client, {"argv": argv, "timeout_seconds": 3000}, 3100)
            if done.get("exit_code") != 0:
                raise images.ImageError(f"packing {name} failed: {str(done)[-600:]}")
        raw = work / "scratch.raw"
        builder._run(
            host_tools.QEMU_IMG, ["convert", "-O", "raw", scratch, raw], what="read the layer"
        )
        layer_tar = work / "layer.tar"
        builder._run(host_tools.DEBUGFS, ["-R", f"dump /layer.tar {layer_tar}", raw], what="dump")
        raw.unlink()
        diff_id = "sha256:" + builder.sha256_file(layer_tar)
        compressed = work / "layer.tar.gz"
        with (
            layer_tar.open("rb") as source,
            compressed.open("wb") as sink,
            gzip.GzipFile("", "wb", 6, sink, mtime=0) as packed,  # no name, no time: reproducible
        ):
            shutil.copyfileobj(source, packed, 4 * 1024 * 1024)
        layer_tar.unlink()
        layer_digest, layer_size = images.store_file_blob(store, compressed)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.pyro.environment": name,
                "org.pyro.build_id": str(manifest.get("build_id")),
                "org.pyro.kernel": str((manifest.get("kernel") or {}).get("version")),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = images.write_blob(store, config_bytes)
    oci_manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    digest = images.write_blob(
        store, json.dumps(oci_manifest, sort_keys=True, separators=(",", ":")).encode()
    )
    record.write_text(json.dumps({"manifest_digest": digest}))
    return digest


def _builder_machine(
    accel_name: str,
    kernel: Path,
    initrd: Path,
    files: VmFiles,
    workspace: Path,
    baseline: Path,
) -> MachineSpec:
    """A guest booted from the runtime drive's overlay, ``workspace`` writable,
    ``baseline`` read-only."""
    return MachineSpec(
        qemu=host_tools.require(host_tools.QEMU)["qemu-system-x86_64"],
        accel=accel_name,
        # Two where the host has them: under TCG the guest kernel's writeback and
        # block completions then run beside tar (a 233 MiB layer: 13 s, not 20 s).
        vcpu_count=min(2, os.cpu_count() or 1),
        mem_mib=1024,
        kernel=kernel,
        initrd=initrd,
        root_disk=files.root_disk,
        agent_socket=Path(files.agent_socket.name),
        console_socket=Path(files.console_socket.name),
        qmp_socket=Path(files.qmp_socket.name),
        hostname="pyro-build",
        network=False,
        workspace_disk=workspace,
        baseline_disk=baseline,
    )
