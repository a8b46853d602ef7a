"""Per-VM disks: qcow2 overlays on an environment's read-only root image.

Forks share their parent's disk state as read-only *layers* instead of each
copying it: the copy of the parent's top image (taken while it was paused)
becomes ``STEM.layer-N.qcow2``, hardlinked into every fork's folder along
with the layers beneath it, and each fork writes to its own small top image
on it. A layer names the one beneath it relative to its own folder, so the
same file resolves in whichever folder it is linked into; deleting any one
workspace unlinks only its names.
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


def rebase_in_place(overlay: Path, backing: Path, backing_format: str = "raw") -> None:
    """Point ``overlay`` at ``backing`` (same content, another path): rewrites the header only."""
    _qemu_img(
        [
            "rebase",
            "-u",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing_format,
            "-b",
            str(backing),
            str(overlay),
        ],
        overlay,
    )


@dataclass(frozen=True)
class Layer:
    """A frozen copy of a top image, and the parent's layers it rests on."""

    path: Path
    stem: str
    depth: int
    lower: tuple[Path, ...]

    @property
    def name(self) -> str:
        return layer_name(self.stem, self.depth)


def layer_name(stem: str, depth: int) -> str:
    return f"{stem}.layer-{depth}.qcow2"


def freeze(copy: Path, stem: str, portable: frozenset[str] = frozenset()) -> Layer:
    """Make ``copy`` (a copy of a top image) a read-only layer forks can share.

    Its backing is renamed relative to its folder when it is one of the
    parent's layers or a base every fork folder also has (``portable`` names,
    such as the hardlinked baseline); an environment image elsewhere keeps its
    absolute path.
    """
    images = backing_chain(copy)
    lower = tuple(Path(i["filename"]) for i in images[1:] if i.get("format") == "qcow2")
    if len(images) > 1:
        backing = Path(images[1]["filename"])
        if backing.name.startswith(f"{stem}.layer-") or backing.name in portable:
            rebase_in_place(copy, Path(backing.name), images[1]["format"])
    os.chmod(copy, 0o444)
    return Layer(copy, stem, len(lower) + 1, lower)


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
