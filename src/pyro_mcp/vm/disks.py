"""Per-VM disks: qcow2 overlays on an environment's read-only root image.

Forks share their parent's disk state as read-only *layers* instead of
copying it. At a fork the parent's live top image itself becomes a layer: it
gets a second name, ``STEM.layer-N.qcow2``, and QEMU switches the running
drive onto a new empty top, ``STEM.top-N.qcow2``, made on it beforehand. Each
fork links the layer (and the layers beneath it) into its own folder and
writes to a small top of its own. So a fork costs what it later writes, for
the parent as for the child.

While the parent runs, the new top keeps its ``top-N`` name: QEMU reopens an
image by the name it opened it with, so no image QEMU holds is ever renamed.
Once the VM is down, ``settle`` gives the newest top the drive's own name
(``STEM.qcow2``) again. Every image names its backing relative to its folder
(``baseline.ext4``, ``STEM.layer-N.qcow2``) when that is in the same folder, so
a chain resolves in whichever folder it is linked into, and deleting any one
workspace unlinks only its names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.errors import VMError

log = logging.getLogger("pyro.disks")

_NUMBERED = re.compile(r"^(?P<stem>.+)\.(?P<kind>layer|top)-(?P<n>\d+)\.qcow2$")
_QCOW2_MAGIC = b"QFI\xfb"


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay of ``base`` (raw, or a qcow2 image environment's layers);
    costs only what the guest writes."""
    backing = _backing_name(base, overlay)
    kind = "qcow2" if is_qcow2(base) else "raw"
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", kind, "-b", backing, str(overlay)], overlay)


def is_qcow2(image: Path) -> bool:
    with image.open("rb") as handle:
        return handle.read(4) == _QCOW2_MAGIC


def mark_fresh(overlay: Path) -> None:
    """Note that ``overlay`` was just made from its baseline and not yet booted:
    the guest's change record then starts whole (see ``guest/changes.py``)."""
    _fresh_marker(overlay).touch()


def take_fresh(overlay: Path) -> bool:
    """Whether ``overlay`` is still fresh; the mark goes (a boot uses it once)."""
    try:
        _fresh_marker(overlay).unlink()
    except FileNotFoundError:
        return False
    return True


def _fresh_marker(overlay: Path) -> Path:
    return overlay.with_name(overlay.name + ".fresh")


def create_blank(image: Path, size_mib: int) -> None:
    """An empty qcow2 image of ``size_mib`` (a drive's stand-in; costs ~200 KB)."""
    _qemu_img(["create", "-q", "-f", "qcow2", str(image), f"{size_mib}M"], image)


@dataclass(frozen=True)
class Layer:
    """A parent's former top image, frozen, and the parent's layers it rests on."""

    path: Path
    stem: str
    lower: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Split:
    """A running drive's live top, about to become ``layer``, and the empty ``top``
    QEMU switches the drive onto (made beforehand, on the layer)."""

    live: Path
    layer: Path
    top: Path


def live_top(image: Path) -> Path:
    """The image a running drive named ``image`` (``STEM.qcow2``) writes to now.

    That is ``image`` itself, unless the VM was forked since it started: then
    it is the newest ``STEM.top-N.qcow2``.
    """
    tops = _numbered(image, "top")
    return tops[-1][1] if tops else image


def split(image: Path) -> Split:
    """Prepare the live top of drive ``image`` to become a layer: a second name
    for it and an empty top on that name. Nothing changes for the VM until it
    switches (see the supervisor's ``fork_save``); ``unsplit`` undoes this."""
    live = live_top(image)
    taken = [n for n, _ in _numbered(image, "layer") + _numbered(image, "top")]
    number = max(taken, default=0) + 1
    layer = image.with_name(f"{_stem(image)}.layer-{number}.qcow2")
    top = image.with_name(f"{_stem(image)}.top-{number}.qcow2")
    size = _virtual_size(live)
    os.link(live, layer)
    try:
        # -u: the layer is in use by the running VM; its size is given instead.
        create = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer.name, "-u"]
        _qemu_img([*create, str(top), str(size)], top)
    except BaseException:
        layer.unlink(missing_ok=True)
        raise
    return Split(live, layer, top)


def convert_over(source: Path, base: Path, out: Path) -> None:
    """``out``: a qcow2 over ``base`` that reads as ``source`` does (only what
    differs is written; ``base`` named relative when it shares ``out``'s folder)."""
    backing = _backing_name(base, out)
    kind = "qcow2" if is_qcow2(base) else "raw"
    args = ["convert", "-q", "-O", "qcow2", "-B", backing, "-F", kind, str(source), out.name]
    result = host_tools.run(host_tools.QEMU_IMG, args, capture_output=True, cwd=out.parent)
    if result.returncode != 0:
        out.unlink(missing_ok=True)
        raise VMError(f"qemu-img could not copy {source} over {base}: {result.stderr.strip()}")


def unsplit(prepared: Split) -> None:
    """Undo ``split`` for a drive that was never switched onto its new top."""
    prepared.top.unlink(missing_ok=True)
    prepared.layer.unlink(missing_ok=True)


def freeze(prepared: Split) -> Layer:
    """The layer a switched drive left behind, read-only from now on."""
    images = backing_chain(prepared.layer)
    lower = tuple(Path(i["filename"]) for i in images[1:] if i.get("format") == "qcow2")
    os.chmod(prepared.layer, 0o444)
    match = _NUMBERED.match(prepared.layer.name)
    assert match is not None
    return Layer(prepared.layer, match["stem"], lower)


def stack_on(layer: Layer, folder: Path) -> Path:
    """Link ``layer`` and the layers beneath it into ``folder``; a new top image on them."""
    for lower in layer.lower:
        target = folder / lower.name
        if not target.exists():
            os.link(lower, target)
    os.link(layer.path, folder / layer.name)
    top = folder / f"{layer.stem}.qcow2"
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer.name, str(top)], top)
    return top


def settle(image: Path) -> None:
    """With the VM down: the newest top of drive ``image`` takes its name again.

    Older ``top-N`` names are second names of layers (each later fork made it
    ``layer-M``), so they go. An image that names its backing by an absolute
    path in its own folder (made before backings were relative) is renamed
    relative, so the folder's chain can be linked into a fork's. Idempotent.
    """
    if not image.parent.is_dir():
        return
    tops = _numbered(image, "top")
    if tops:
        tops[-1][1].replace(image)
        for _, stale in tops[:-1]:
            stale.unlink(missing_ok=True)
    try:
        backing = backing_name(image) if image.exists() else None
        if backing and os.path.isabs(backing) and Path(backing).parent == image.parent:
            _rename_backing(image, Path(backing).name)
    except (VMError, OSError) as exc:  # a damaged image: QEMU will say what is wrong
        log.warning("could not read or rename the backing of %s: %s", image, exc)


def pin_backing(image: Path, folder: Path) -> None:
    """Name ``image``'s backing by its path in ``folder``: a copy of a top kept
    elsewhere (a named snapshot) still resolves. ``settle`` makes it relative
    again once the copy is a drive's top in ``folder``."""
    backing = backing_name(image)
    if backing and not os.path.isabs(backing):
        _rename_backing(image, str(folder / backing))


def replace_top(fresh: Path, image: Path) -> None:
    """Make ``fresh`` drive ``image``'s top (a reset): no older top may outrank it."""
    for _, stale in _numbered(image, "top"):
        stale.unlink(missing_ok=True)
    fresh.replace(image)


def backing_name(image: Path) -> str | None:
    """The backing file name written in qcow2 ``image``'s header (None: no backing).

    Read directly (16 bytes and the name) because it runs before every start.
    """
    with open(image, "rb") as f:
        header = f.read(20)
        if len(header) < 20 or header[:4] != _QCOW2_MAGIC:
            raise VMError(f"{image} is not a qcow2 image")
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset or not size:
            return None
        if size > 1023:
            raise VMError(f"{image} names a backing file longer than qcow2 allows")
        f.seek(offset)
        return f.read(size).decode("utf-8", errors="replace")


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


def _rename_backing(image: Path, name: str) -> None:
    """Write ``name`` as ``image``'s backing file, the same file named another way
    (layers are qcow2; the baseline a workspace's chain ends in is raw)."""
    fmt = "qcow2" if name.endswith(".qcow2") else "raw"
    _qemu_img(["rebase", "-u", "-q", "-f", "qcow2", "-F", fmt, "-b", name, str(image)], image)


def _virtual_size(image: Path) -> int:
    output = _qemu_img(["info", "-U", "--output=json", str(image)], image, capture=True)
    try:
        return int(json.loads(output)["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise VMError(f"qemu-img info {image} answered garbage") from exc


def _stem(image: Path) -> str:
    return image.name.removesuffix(".qcow2")


def _numbered(image: Path, kind: str) -> list[tuple[int, Path]]:
    """``STEM.KIND-N.qcow2`` next to ``image``, by N."""
    found = []
    for entry in os.scandir(image.parent):
        match = _NUMBERED.match(entry.name)
        if match and match["kind"] == kind and match["stem"] == _stem(image):
            found.append((int(match["n"]), Path(entry.path)))
    return sorted(found)


def _backing_name(base: Path, overlay: Path) -> str:
    """How ``overlay`` names ``base``: relative when they share a folder."""
    return base.name if base.parent == overlay.parent else str(base)


def _qemu_img(args: list[str], image: Path, *, capture: bool = False) -> str:
    result = host_tools.run(host_tools.QEMU_IMG, args, capture_output=True)
    if result.returncode != 0:
        raise VMError(f"qemu-img could not {args[0]} {image}: {result.stderr.strip()}")
    return result.stdout if capture else ""
