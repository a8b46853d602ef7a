"""Per-VM disks: qcow2 overlays on an environment's read-only root image.

Forks share their parent's disk state as read-only *layers* instead of
copying it. At a fork, the parent's top image itself becomes
``STEM.layer-N.qcow2`` (QEMU switches the running parent onto a new, empty
top image under the old name: ``blockdev-snapshot``), and that layer is
hardlinked into every fork's folder along with the layers beneath it; each
fork writes to its own small top image on it. Nothing is copied. A layer
names the one beneath it relative to its own folder, so the same file
resolves in whichever folder it is linked into; deleting any one workspace
unlinks only its names. Top images name their layer by absolute path (a
snapshot's copy of a top image then resolves from anywhere).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.errors import VMError


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay of the raw ``base``; costs only what the guest writes."""
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)], overlay)


def create_blank(image: Path, size_mib: int) -> None:
    """An empty qcow2 image of ``size_mib`` (a drive's stand-in; costs ~200 KB)."""
    _qemu_img(["create", "-q", "-f", "qcow2", str(image), f"{size_mib}M"], image)


@dataclass(frozen=True)
class Layer:
    """A read-only image forks share (a parent's former top), and the layers beneath it."""

    path: Path
    stem: str
    lower: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class LayerPlan:
    """How a running VM's top image becomes a layer at a fork (the supervisor does it).

    ``top`` keeps its name for the VM's new top image, made beforehand at
    ``next_top`` on the layer; the current file gets the name ``layer``.
    ``backing`` is the current file's backing rewritten relative to its folder
    (None: it stays as it is).
    """

    device: str
    stem: str
    top: Path
    layer: Path
    next_top: Path
    backing: str | None
    lower: tuple[Path, ...]

    def as_layer(self) -> Layer:
        return Layer(self.layer, self.stem, self.lower)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "device": self.device,
            "top": str(self.top),
            "layer": str(self.layer),
            "next_top": str(self.next_top),
            "backing": self.backing,
        }

    def discard(self) -> None:
        """Remove what the plan made when the VM never switched to it."""
        self.next_top.unlink(missing_ok=True)


def plan_layer(
    device: str, top: Path, stem: str, portable: frozenset[str] = frozenset()
) -> LayerPlan:
    """Plan turning the running ``top`` into a layer, and make its successor's file.

    Its backing is to be renamed relative to its folder when it is one of the
    VM's layers or a base every fork folder also has (``portable`` names,
    such as the hardlinked baseline); an environment image elsewhere keeps its
    absolute path. The layer's name is new in the folder and among the layers
    beneath it.
    """
    images = backing_chain(top)
    lower = tuple(Path(i["filename"]) for i in images[1:] if i.get("format") == "qcow2")
    backing = None
    if len(images) > 1:
        below = Path(images[1]["filename"])
        if below.name.startswith(f"{stem}.layer-") or below.name in portable:
            backing = below.name
    taken = {p.name for p in top.parent.glob(f"{stem}.layer-*.qcow2")} | {p.name for p in lower}
    depth = len(lower) + 1
    while f"{stem}.layer-{depth}.qcow2" in taken:
        depth += 1
    layer = top.with_name(f"{stem}.layer-{depth}.qcow2")
    next_top = top.with_name(f"{stem}.next.qcow2")
    size = str(virtual_size(top))
    next_top.unlink(missing_ok=True)
    # -u: the layer does not exist under that name yet.
    _qemu_img(
        ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", str(layer), str(next_top), size],
        next_top,
    )
    return LayerPlan(device, stem, top, layer, next_top, backing, lower)


def stack_on(layer: Layer, folder: Path) -> Path:
    """Link ``layer`` and the layers beneath it into ``folder``; a new top image on them."""
    for lower in layer.lower:
        target = folder / lower.name
        if not target.exists():
            os.link(lower, target)
    os.link(layer.path, folder / layer.name)
    top = folder / f"{layer.stem}.qcow2"
    _qemu_img(
        ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(folder / layer.name), str(top)],
        top,
    )
    return top


def rename_backing(image: Path, name: str) -> None:
    """Write ``name`` as ``image``'s backing file name, in its qcow2 header.

    For a layer QEMU has just stopped writing (it holds it open read-only, so
    ``qemu-img rebase`` cannot lock it, and QMP ``change-backing-file`` would
    also record the image's own format as the backing's). ``name`` must be
    the last part of the current backing path (the same file, found relative
    to the image's folder); the backing format is left as it is.
    """
    with image.open("r+b") as handle:
        header = handle.read(QCOW2_HEADER_BYTES)
        if len(header) < QCOW2_HEADER_BYTES or header[:4] != b"QFI\xfb":
            raise VMError(f"{image} is not a qcow2 image")
        offset = int.from_bytes(header[8:16], "big")
        size = int.from_bytes(header[16:20], "big")
        if offset == 0 or not 0 < size <= QCOW2_MAX_BACKING_NAME:
            raise VMError(f"{image} has no backing file to rename")
        handle.seek(offset)
        current = handle.read(size).decode("utf-8", "replace")
        if Path(current).name != name:
            raise VMError(f"{image}'s backing is {current!r}, not a path to {name!r}")
        encoded = name.encode()
        handle.seek(offset)
        handle.write(encoded + b"\0" * (size - len(encoded)))
        handle.seek(16)
        handle.write(len(encoded).to_bytes(4, "big"))
        handle.flush()
        os.fsync(handle.fileno())


# qcow2 header: magic, version, backing_file_offset (8 bytes at 8),
# backing_file_size (4 bytes at 16); names are at most 1023 bytes.
QCOW2_HEADER_BYTES = 20
QCOW2_MAX_BACKING_NAME = 1023


def virtual_size(image: Path) -> int:
    output = _qemu_img(["info", "-U", "--output=json", str(image)], image, capture=True)
    try:
        return int(json.loads(output)["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise VMError(f"qemu-img info {image} answered garbage") from exc


def backing_chain(image: Path) -> list[dict[str, str]]:
    """``image`` and every image beneath it (``filename``, ``format``), top first."""
    output = _qemu_img(
        ["info", "-U", "--backing-chain", "--output=json", str(image)], image, capture=True
    )
    try:
        images = json.loads(output)
    except ValueError as exc:
        raise VMError(f"qemu-img info {image} answered garbage") from exc
    return [{"filename": str(i["filename"]), "format": str(i["format"])} for i in images]


def _qemu_img(args: list[str], image: Path, *, capture: bool = False) -> str:
    qemu_img = host_tools.require(host_tools.QEMU_IMG)["qemu-img"]
    result = subprocess.run([str(qemu_img), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VMError(f"qemu-img could not {args[0]} {image}: {result.stderr.strip()}")
    return result.stdout if capture else ""
