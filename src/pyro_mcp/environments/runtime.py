"""The runtime drive: what pyro's guest agent needs, outside any image.

An environment made from an OCI image may have no Python, no glibc (musl) or
no shell. pyro never writes into the image, so the agent brings its own:
a small read-only ext4 image (~45 MB) holding Debian's Python 3.11 with its
own loader and C library, GNU tar and zstd. It is made once per set of
package versions from the host's apt (``apt-get download`` and ``dpkg-deb
-x``: no root needed) and shared by every image environment.

The guest's init mounts it at ``/run/pyro/runtime`` and starts the agent
through its loader (``ld-linux … --library-path …``), so nothing of it leaks
into the commands the agent runs: they see the image's own libraries and
``PATH``. The same tree is also a tiny root filesystem (``/usr/bin/python3``,
``/bin/sh``): the guest that applies an image's layers boots from it.

Why a drive and not the initramfs: the initramfs is unpacked into every
guest's RAM, while a drive costs only the pages the agent reads, and it keeps
the warm snapshot of a curated environment unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.environments import builder

PACKAGES = (
    "libc6",
    "libgcc-s1",
    "zlib1g",
    "libffi8",
    "libexpat1",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    # Applying layers: GNU tar (xattrs, owners, sparse files) and zstd.
    "tar",
    "libacl1",
    "libselinux1",
    "libpcre2-8-0",
    "zstd",
    "gzip",
    "libzstd1",
    "dash",
)
# Where the guest mounts this drive and how it starts the agent from it (the
# loader, library path and interpreter) is spelled once, in guest/init.sh; the
# agent reuses its own command line for helpers (guest/network.connect_command).


def ensure_runtime(cache_dir: Path, progress: builder.Progress) -> Path:
    """The runtime image (``runtime.ext4``) for the host's current package versions."""
    host_tools.require(host_tools.APT_GET, host_tools.APT_CACHE, host_tools.DPKG_DEB)
    versions = _versions()
    key = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
    home = cache_dir / "runtime"
    image = home / key / "runtime.ext4"
    if image.is_file():
        return image
    progress(f"phase=runtime downloading {len(PACKAGES)} packages for the guest agent")
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=".partial-") as tmp:
        work = Path(tmp)
        downloads = work / "debs"
        downloads.mkdir()
        builder._run(
            host_tools.APT_GET,
            ["download", "-q", "-o", "APT::Sandbox::User=root", *PACKAGES],
            cwd=downloads,
            what="download the runtime packages",
        )
        root = work / "root"
        for deb in sorted(downloads.glob("*.deb")):
            builder._run(host_tools.DPKG_DEB, ["-x", deb, root], what=f"unpack {deb.name}")
        _finish_tree(root)
        progress("phase=runtime packing the runtime image")
        raw = work / "runtime.ext4"
        size_mib = _used_mib(root) * 5 // 4 + 16
        mkfs: list[str | os.PathLike[str]] = ["-q", "-F", "-L", "pyro-runtime"]
        mkfs += ["-E", "root_owner=0:0", "-d", root, raw, f"{size_mib}M"]
        builder._run(
            host_tools.MKFS_EXT4,
            mkfs,
            what="mkfs.ext4 (runtime)",
        )
        os.chmod(raw, 0o444)
        (work / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True))
        image.parent.mkdir(exist_ok=True)
        os.replace(raw, image)
        os.replace(work / "versions.json", image.parent / "versions.json")
    return image


@functools.cache
def _versions() -> dict[str, str]:
    """The host's candidate version of each package (asked once per process)."""
    return builder.apt_candidate_versions(PACKAGES)


def _finish_tree(root: Path) -> None:
    """What a root filesystem needs beyond the packages' files."""
    for link, target in (("usr/bin/python3", "python3.11"), ("bin/sh", "dash")):
        path = root / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.symlink_to(target)
    for directory in ("etc", "run", "tmp", "dev", "proc", "sys", "root", "workspace"):
        (root / directory).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    # Documentation and locales are of no use to the agent.
    for unused in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian"):
        shutil.rmtree(root / unused, ignore_errors=True)


def _used_mib(root: Path) -> int:
    total = 0
    for current, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(current, name)).st_size
    return total // (1024 * 1024) + 1
