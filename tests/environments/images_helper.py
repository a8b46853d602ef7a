"""OCI images made in the tests with Debian's umoci and skopeo, and a loopback registry."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import subprocess
import tarfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

BUSYBOX_APPLETS = ("sh", "ls", "cat", "id", "echo", "env", "pwd", "stat", "readlink", "touch")
# VFS_CAP_REVISION_2 with the effective flag: cap_net_raw (13) permitted.
NET_RAW_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def umoci(*args: str | Path) -> None:
    subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)


def busybox_image(layout: Path, tag: str = "bb") -> str:
    """An image holding only a static busybox, a user ``app`` (1000), Env and WorkingDir.

    Returns its ``oci:`` reference.
    """
    if not (layout / "index.json").exists():
        umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:{tag}")
    bundle = layout.parent / f"bundle-{tag}"
    umoci("unpack", "--rootless", "--image", f"{layout}:{tag}", bundle)
    root = bundle / "rootfs"
    for folder in ("bin", "etc", "home/app"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    umoci("repack", "--image", f"{layout}:{tag}", bundle)
    umoci(
        "config",
        "--image",
        f"{layout}:{tag}",
        "--config.env",
        "PATH=/bin",
        "--config.env",
        "GREETING=hello from the image",
        "--config.user",
        "app",
        "--config.workingdir",
        "/home/app",
        "--config.cmd",
        "/bin/sh",
    )
    shutil.rmtree(bundle, ignore_errors=True)
    return f"oci:{layout}:{tag}"


def add_layer(layout: Path, tag: str, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    """Append a layer made of ``members`` (uncompressed tar, as umoci takes it)."""
    archive = layout.parent / f"layer-{tag}-{time.monotonic_ns()}.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    umoci("raw", "add-layer", "--image", f"{layout}:{tag}", archive)
    archive.unlink()


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    mode: int = 0o644,
    uid: int = 0,
    link: str = "",
    xattrs: dict[str, bytes] | None = None,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.linkname = link
    info.mtime = 1_700_000_000
    if xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{key}": value.decode("latin-1") for key, value in xattrs.items()
        }
    return info


def first_layer() -> list[tuple[tarfile.TarInfo, bytes]]:
    """The layer ``layered_image`` puts over busybox first (the same bytes each time)."""
    directory = tarfile.DIRTYPE
    return [
        (entry("opt", directory, mode=0o755), b""),
        (entry("opt/keep.txt"), b"keep\n"),
        (entry("opt/gone.txt"), b"gone\n"),
        (entry("opt/becomes_file", directory, mode=0o755), b""),
        (entry("opt/becomes_file/inner.txt"), b"inner\n"),
        (entry("etc/opaque", directory, mode=0o755), b""),
        (entry("etc/opaque/lower.txt"), b"lower\n"),
    ]


def layered_image(layout: Path, base: str) -> str:
    """The busybox image tagged ``base`` plus two layers: the second deletes and
    replaces what the first made (a whiteout, an opaque directory, a directory
    become a file) and adds a hard link, a symlink out of the root, a setuid
    binary and a file with a capability."""
    umoci("tag", "--image", f"{layout}:{base}", "layered")
    add_layer(layout, "layered", first_layer())
    add_layer(
        layout,
        "layered",
        [
            (entry("opt/.wh.gone.txt"), b""),
            (entry("opt/becomes_file"), b"now a file\n"),
            (entry("etc/opaque/.wh..wh..opq"), b""),
            (entry("etc/opaque/upper.txt"), b"upper\n"),
            (entry("opt/hard", tarfile.LNKTYPE, link="opt/keep.txt"), b""),
            (entry("opt/passwd", tarfile.SYMTYPE, link="/etc/passwd"), b""),
            (entry("bin/suid", mode=0o4755), b"#!/bin/sh\necho suid\n"),
            (
                entry(
                    "bin/cap",
                    mode=0o755,
                    xattrs={"security.capability": NET_RAW_CAPABILITY},
                ),
                b"#!/bin/sh\necho cap\n",
            ),
            (entry("home/app/mine.txt", uid=1000), b"mine\n"),
        ],
    )
    return f"oci:{layout}:layered"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outward_address() -> str:
    """This host's first IPv4 address that is not loopback."""
    found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True)
    addresses = [a for a in found.stdout.split() if "." in a and not a.startswith("127.")]
    assert addresses, "the tests need an IPv4 address besides loopback (hostname -I)"
    return addresses[0]


@contextlib.contextmanager
def loopback_registry(
    work: Path, *, password: str | None = None, address: str = "127.0.0.1"
) -> Iterator[str]:
    """Debian's docker-registry on ``address`` (plain HTTP), stopped afterwards;
    with ``password``, it lets in only the user ``pyro`` with that password."""
    port = free_port()
    config = work / f"registry-{port}.yml"
    auth = ""
    if password is not None:
        with warnings.catch_warnings():  # deprecated, and the one bcrypt maker at hand
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # Debian's libxcrypt makes bcrypt, which the registry wants

        htpasswd = work / f"htpasswd-{port}"
        htpasswd.write_text(f"pyro:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
        auth = f"auth:\n  htpasswd:\n    realm: pyro-tests\n    path: {htpasswd}\n"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry-data'}\n"
        f"http:\n  addr: {address}:{port}\n" + auth
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((address, port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("docker-registry did not start")
            time.sleep(0.1)
        yield f"{address}:{port}"
    finally:
        process.terminate()
        process.wait(10)


def push(source: str, destination: str, *, auth_file: Path | None = None) -> None:
    auth = ["--dest-authfile", str(auth_file)] if auth_file else []
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", *auth, source, destination],
        check=True,
        capture_output=True,
    )


def debugfs_cat(rootfs: Path, path: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(rootfs)], check=True, capture_output=True, text=True
    )
    return result.stdout


NODE_PACKAGES = ("nodejs", "npm")
# The host may have another nodejs installed (not from its Debian sources): resolve
# against the sources alone.
APT_SOURCES_ONLY = ("-o", "Dir::State::status=/dev/null")
APT_IMPORTANT_ONLY = tuple(
    f"--no-{kind}"
    for kind in ("recommends", "suggests", "conflicts", "breaks", "replaces", "enhances")
)


def node_image(layout: Path, base: str, rootfs: Path, debs: Path) -> str:
    """The Debian image tagged ``base`` (whose root filesystem is ``rootfs``) plus
    one layer: Debian's nodejs and npm with every package they need that the
    base lacks (downloaded with the host's apt into ``debs``, kept there), and a
    user ``node`` (1000) that the config names. Returns its ``oci:`` reference."""
    installed = {
        line.split(":", 1)[1].strip()
        for line in debugfs_cat(rootfs, "/var/lib/dpkg/status").splitlines()
        if line.startswith("Package:")
    }
    closure = subprocess.run(
        [
            "apt-cache",
            *APT_SOURCES_ONLY,
            "depends",
            "--recurse",
            *APT_IMPORTANT_ONLY,
            *NODE_PACKAGES,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wanted = sorted(
        {line for line in closure.splitlines() if line and line[0] not in " <"} - installed
    )
    debs.mkdir(parents=True, exist_ok=True)
    missing = [name for name in wanted if not list(debs.glob(f"{name}_*.deb"))]
    if missing:
        subprocess.run(
            ["apt-get", *APT_SOURCES_ONLY, "download", *missing],
            cwd=debs,
            check=True,
            capture_output=True,
        )
    root = layout.parent / "node-root"
    for name in wanted:
        deb = sorted(debs.glob(f"{name}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # The base is merged-/usr (/bin, /lib... are links into /usr): so is the layer.
    for top in ("bin", "sbin", "lib", "lib64"):
        if (root / top).is_dir() and not (root / top).is_symlink():
            subprocess.run(["cp", "-a", f"{root / top}/.", str(root / "usr" / top)], check=True)
            shutil.rmtree(root / top)
    (root / "etc").mkdir(exist_ok=True)
    passwd = debugfs_cat(rootfs, "/etc/passwd") + "node:x:1000:1000::/home/node:/bin/bash\n"
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(debugfs_cat(rootfs, "/etc/group") + "node:x:1000:\n")
    (root / "home" / "node").mkdir(parents=True)

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        mine = info.name == "home/node"
        info.uid = info.gid = 1000 if mine else 0
        info.uname = info.gname = "node" if mine else "root"
        return info

    archive = layout.parent / "node-layer.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.iterdir()):
            tar.add(path, arcname=path.name, filter=owned)
    shutil.rmtree(root)
    umoci("tag", "--image", f"{layout}:{base}", "node")
    umoci("raw", "add-layer", "--image", f"{layout}:node", archive)
    archive.unlink()
    umoci(
        "config",
        "--image",
        f"{layout}:node",
        "--config.env",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "--config.env",
        "NODE_ENV=development",
        "--config.user",
        "node",
        "--config.workingdir",
        "/home/node",
    )
    return f"oci:{layout}:node"
