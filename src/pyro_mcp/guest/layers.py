"""Applying an OCI image's layers, in the guest that builds an image environment
(standard library only).

That guest boots from the runtime drive (``environments/runtime.py``) as root;
the disk being built is mounted at /workspace and the layers (compressed tar
blobs, named by digest) at /run/pyro/baseline. The host has listed each layer
already and sends what it removes: whiteouts (``.wh.NAME``) name lower entries
to delete, opaque directories (``.wh..wh..opq``) lose their lower contents,
and an entry of one type replacing another (a file where a directory was)
removes the old one first. Then GNU tar extracts the layer as root, keeping
owners, modes, setuid bits, hard links and extended attributes (file
capabilities), and leaving the whiteout markers out.

Everything runs inside this disposable guest: a layer that tries to write
through a symlink reaches only the builder's own throwaway root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

try:
    from pyro_mcp.guest import disks, fileops
except ImportError:  # inside the guest, beside this file
    import disks  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError

ROOT = "/workspace"
BLOBS = "/run/pyro/baseline"
RAW_SERIAL = "pyro-baseline"  # the blobs drive, read raw (not mounted)
TAR_ERROR_TAIL = 4000
# How a layer is extracted, here and on the host (vm/image_builder.py): as root,
# owners, modes, setuid bits and xattrs kept, whiteout markers left out.
TAR_KEEPS = (
    "--numeric-owner",
    "--same-owner",
    "--preserve-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--exclude=.wh.*",
)


def op_layer_apply(args: dict[str, Any]) -> dict[str, Any]:
    """Apply one layer: from ``blob`` on the mounted blobs drive, or with ``offset``
    and ``size``, from that place of the raw blobs drive (not mounted)."""
    blob = args.get("blob")
    if not isinstance(blob, str) or not blob.isalnum():
        raise RequestError("bad_args", "blob must be a digest's hex")
    offset = args.get("offset")
    if offset is None:
        source = os.path.join(BLOBS, blob)
        if not os.path.isfile(source):
            raise RequestError("not_found", f"no layer blob {blob}")
    elif not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or offset % 512:
        raise RequestError("bad_args", "offset must be a multiple of 512")
    else:
        source = disks._find_disk(RAW_SERIAL)
    removed = 0
    for path in _paths(args.get("remove")):
        removed += _remove(path)
    for path in _paths(args.get("opaque")):
        if os.path.isdir(path) and not os.path.islink(path):
            for name in os.listdir(path):
                removed += _remove(os.path.join(path, name))
    for entry in args.get("entries") or []:
        if not isinstance(entry, list) or len(entry) != 2:
            raise RequestError("bad_args", "entries are [path, is_directory] pairs")
        path, is_directory = _inside(entry[0]), bool(entry[1])
        if os.path.lexists(path):
            existing = os.path.isdir(path) and not os.path.islink(path)
            if existing != is_directory:  # tar replaces a file by a file itself
                removed += _remove(path)
    if args.get("extract") is False:  # only the type checks of a large layer's first part
        return {"removed": removed}
    command = [
        "tar",
        "--extract",
        "--file",
        source if offset is None else "-",
        "--directory",
        ROOT,
        *TAR_KEEPS,
    ]
    if offset is not None:
        # 128 KiB reads of the drive, not tar's default 10 KiB: each read is a
        # system call, and under emulation those add up (a 233 MiB layer: ~2 s).
        command.append("--blocking-factor=256")
    transform = args.get("transform")
    if isinstance(transform, str) and transform:
        command.append(f"--transform={transform}")
    # A layer on the raw drive: tar reads the drive itself from the layer's
    # offset and stops at the layer's end-of-archive mark (zeros follow it).
    stdin = subprocess.DEVNULL if offset is None else os.open(source, os.O_RDONLY)
    try:
        if offset is not None:
            os.lseek(stdin, offset, os.SEEK_SET)
        done = subprocess.run(command, stdin=stdin, capture_output=True, check=False, timeout=3600)
    finally:
        if offset is not None:
            os.close(stdin)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace")[-TAR_ERROR_TAIL:]
        raise RequestError("layer_failed", f"tar exited {done.returncode}: {tail}")
    return {"removed": removed}


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError("bad_args", "expected a list of paths")
    return [_inside(item) for item in value]


def _inside(path: Any) -> str:
    """``path`` (relative to the image root) under /workspace, never through a symlink."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise RequestError("bad_path", "a layer path must be a non-empty string")
    normal = os.path.normpath(path.lstrip("/"))
    if normal == "." or normal.startswith("../") or normal == "..":
        raise RequestError("bad_path", f"{path!r} leaves the image root")
    full = os.path.join(ROOT, normal)
    parent = os.path.realpath(os.path.dirname(full))
    if parent != ROOT and not parent.startswith(ROOT + "/"):
        raise RequestError("bad_path", f"{path!r} goes through a link out of the image root")
    return full


def _remove(path: str) -> int:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
        return 1
    if os.path.lexists(path):
        os.unlink(path)
        return 1
    return 0


OPERATIONS = {"layer_apply": op_layer_apply}
