"""Builds the parts of an environment from the distribution's packages.

* kernel: the cloud kernel package, downloaded with the host's apt and
  extracted (never installed on the host); only vmlinuz and the few virtio
  modules the guest needs are kept.
* initramfs: busybox-static, those modules, pyro's init and agent, written
  as a newc cpio archive directly (so ``/dev/console`` needs no root).
* root filesystem: ``debootstrap --variant=minbase`` plus the environment's
  packages, packed into an ext4 image with ``mkfs.ext4 -d``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pyro_mcp import config, host_tools
from pyro_mcp.environments.catalog import EnvironmentSpec
from pyro_mcp.errors import EnvironmentBuildError, HostSetupError

Progress = Callable[[str], None]

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    # Free page reporting: a cold-booted guest hands the memory it frees back.
    "virtio_balloon",
)
# Builds made before a module was added lack it: their guests do without.
OPTIONAL_MODULES = frozenset({"virtio_balloon"})


@dataclass(frozen=True)
class Kernel:
    package: str
    version: str
    vmlinuz: Path
    modules_dir: Path

    @property
    def release(self) -> str:
        return self.package.removeprefix("linux-image-")


# ------------------------------------------------------------------- mirror


def debian_mirror() -> str:
    """The Debian mirror: ``PYRO_DEBIAN_MIRROR``, else the host's apt configuration.

    Raises:
        HostSetupError: no Debian mirror is configured anywhere.
    """
    override = config.debian_mirror_override()
    if override:
        return override
    for uri in _apt_source_uris(Path("/etc/apt")):
        if "security" not in uri:
            return uri.rstrip("/")
    raise HostSetupError(
        "no Debian mirror found in /etc/apt/sources.list{,.d}; set PYRO_DEBIAN_MIRROR "
        "to the URL of a Debian archive"
    )


def _apt_source_uris(apt_dir: Path) -> list[str]:
    uris: list[str] = []
    sources_d = apt_dir / "sources.list.d"
    deb822 = sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []
    for path in deb822:
        for line in path.read_text(errors="replace").splitlines():
            if line.strip().lower().startswith("uris:"):
                uris.extend(line.split(":", 1)[1].split())
    one_line = [apt_dir / "sources.list"]
    one_line += sorted(sources_d.glob("*.list")) if sources_d.is_dir() else []
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 2 and words[0] == "deb":
                uris.append(words[1])
    return [u for u in uris if u.startswith(("http://", "https://", "file:/"))]


# ------------------------------------------------------------------- kernel


def fetch_kernel(kernels_dir: Path, progress: Progress) -> Kernel:
    """The current cloud kernel, downloaded and extracted once per version."""
    host_tools.require(host_tools.APT_GET, host_tools.APT_CACHE, host_tools.DPKG_DEB)
    package, version = _current_kernel(kernels_dir)
    target = kernels_dir / f"{package}_{version}"
    if (target / "vmlinuz").is_file() and all(
        (target / "modules" / f"{name}.ko").is_file() for name in GUEST_MODULES
    ):
        return Kernel(package, version, target / "vmlinuz", target / "modules")

    progress(f"phase=kernel downloading {package} {version}")
    kernels_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernels_dir, prefix=".partial-") as tmp:
        work = Path(tmp)
        _run(
            host_tools.APT_GET,
            ["download", "-q", "-o", "APT::Sandbox::User=root", package],
            cwd=work,
            what=f"download {package}",
        )
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise EnvironmentBuildError(f"apt-get download {package} produced no package file")
        extract = work / "extract"
        _run(host_tools.DPKG_DEB, ["-x", debs[0], extract], what="unpack kernel")
        staged = work / "kernel"
        (staged / "modules").mkdir(parents=True)
        vmlinuz = next(iter((extract / "boot").glob("vmlinuz-*")), None)
        if vmlinuz is None:
            raise EnvironmentBuildError(f"{package} contains no /boot/vmlinuz-*")
        shutil.copy2(vmlinuz, staged / "vmlinuz")
        module_root = next(iter((extract / "lib" / "modules").iterdir()))
        for name in GUEST_MODULES:
            found = list(module_root.rglob(f"{name}.ko"))
            if not found:
                raise EnvironmentBuildError(f"{package} has no module {name}.ko")
            shutil.copy2(found[0], staged / "modules" / f"{name}.ko")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return Kernel(package, version, target / "vmlinuz", target / "modules")


APT_LISTS = Path("/var/lib/apt/lists")
RESOLVED = ".resolved.json"


def _current_kernel(kernels_dir: Path) -> tuple[str, str]:
    """The kernel package and version apt offers now. Asking apt takes ~2 s, and
    the answer changes only with apt's package lists, so it is kept beside the
    kernels with a fingerprint of those lists and asked again when they change."""
    fingerprint = _apt_lists_fingerprint()
    record = kernels_dir / RESOLVED
    with contextlib.suppress(OSError, ValueError, AttributeError, KeyError):
        known = json.loads(record.read_text())
        if fingerprint and known["fingerprint"] == fingerprint:
            return str(known["package"]), str(known["version"])
    package = _resolve_kernel_package()
    version = _apt_candidate_version(package)
    if fingerprint:
        with contextlib.suppress(OSError):
            kernels_dir.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{RESOLVED}.{os.getpid()}")
            tmp.write_text(
                json.dumps({"fingerprint": fingerprint, "package": package, "version": version})
            )
            tmp.replace(record)
    return package, version


def _apt_lists_fingerprint() -> str:
    """Names, sizes and change times of apt's package lists ("" when unreadable)."""
    try:
        entries = sorted(
            f"{entry.name}:{entry.stat().st_size}:{entry.stat().st_mtime_ns}"
            for entry in os.scandir(APT_LISTS)
            if entry.is_file()
        )
    except OSError:
        return ""
    if not entries:
        return ""
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _resolve_kernel_package() -> str:
    output = _apt_query(["depends", "--important", KERNEL_META_PACKAGE])
    match = re.search(r"Depends:\s*(linux-image-\S+)", output)
    if not match:
        raise EnvironmentBuildError(
            f"cannot resolve {KERNEL_META_PACKAGE} to a kernel package: {output.strip()[:300]}"
        )
    return match.group(1)


def _apt_candidate_version(package: str) -> str:
    output = _apt_query(["policy", package])
    match = re.search(r"Candidate:\s*(\S+)", output)
    if not match or match.group(1) == "(none)":
        raise EnvironmentBuildError(f"apt has no candidate version of {package}")
    return match.group(1)


def apt_candidate_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Each package's candidate version, in one ``apt-cache policy`` (~0.5 s each here).

    Raises:
        EnvironmentBuildError: apt has no candidate for one of them.
    """
    output = _apt_query(["policy", *packages])
    found: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            found[current] = line.split(":", 1)[1].strip()
    for package in packages:
        if found.get(package) in (None, "(none)"):
            raise EnvironmentBuildError(f"apt has no candidate version of {package}")
    return {package: found[package] for package in packages}


def _apt_query(args: list[str]) -> str:
    """An apt-cache query; runs ``apt-get update`` once if lists are missing (root only)."""
    for attempt in range(2):
        result = host_tools.run(host_tools.APT_CACHE, args, capture_output=True)
        if result.returncode == 0 and "Unable to locate" not in result.stderr:
            return result.stdout
        if attempt == 0 and os.geteuid() == 0:
            host_tools.run(host_tools.APT_GET, ["update", "-q"], capture_output=True)
            continue
        raise EnvironmentBuildError(
            f"`apt-cache {' '.join(args)}` failed: {result.stderr.strip()[:300]}. "
            "Run `sudo apt-get update` and try again."
        )
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- initramfs


def guest_files() -> dict[str, bytes]:
    """The pyro files shipped into the guest: init, the agent's modules and its protocol."""
    guest = resources.files("pyro_mcp.guest")
    agent = resources.files("pyro_mcp.agent")
    files = {"init": guest.joinpath("init.sh").read_bytes()}
    for module in sorted(guest.iterdir(), key=lambda entry: entry.name):
        if module.name.endswith(".py") and module.name != "__init__.py":
            files[f"pyro/{module.name}"] = module.read_bytes()
    files["pyro/protocol.py"] = agent.joinpath("protocol.py").read_bytes()
    return files


def guest_files_hash() -> str:
    """Changes whenever the init or the agent changes: names the initramfs."""
    digest = hashlib.sha256()
    for name, data in sorted(guest_files().items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def build_initramfs(kernel_modules: Path, output: Path) -> None:
    """Write a gzip'd newc initramfs to ``output`` (atomically)."""
    busybox = host_tools.require(host_tools.BUSYBOX)["busybox"]
    archive = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "pyro"):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)
    archive.device("dev/null", major=1, minor=3)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for name in GUEST_MODULES:
        module = kernel_modules / f"{name}.ko"
        if name in OPTIONAL_MODULES and not module.is_file():
            continue
        archive.file(f"lib/modules/{name}.ko", module.read_bytes())
    for name, data in guest_files().items():
        archive.file(name, data, mode=0o755 if name == "init" else 0o644)
    # Several pyro processes (even versions) may build the same file at once:
    # each writes its own partial file and the atomic rename makes one win.
    tmp = output.with_name(f"{output.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


class CpioWriter:
    """A minimal writer of the ``newc`` cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._ino += 1
        self._parts.append(_pad4(header + encoded))
        self._parts.append(_pad4(data))


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# --------------------------------------------------------------- root image


def build_rootfs(
    spec: EnvironmentSpec,
    work_dir: Path,
    output: Path,
    debs_cache: Path,
    progress: Progress,
    log: Path | None = None,
) -> dict[str, str]:
    """Debootstrap ``spec`` in ``work_dir`` and pack it into ``output``.

    ``log`` receives debootstrap's whole output (default: in ``work_dir``);
    keep it outside ``work_dir`` to read it after a failed build is removed.

    Returns:
        The installed packages and their versions.
    """
    if os.geteuid() != 0:
        raise EnvironmentBuildError(
            f"building {spec.name} needs root (debootstrap creates device files and chroots). "
            f"Run `sudo pyro env pull {spec.name}` with PYRO_CACHE_DIR pointing at your cache, "
            "or run `make setup` as root."
        )
    tools = host_tools.require(host_tools.DEBOOTSTRAP, host_tools.MKFS_EXT4, host_tools.CHROOT)
    mirror = debian_mirror()
    root = work_dir / "rootfs"
    debs_cache.mkdir(parents=True, exist_ok=True)
    progress(f"phase=rootfs debootstrap {spec.suite} minbase + {len(spec.packages)} packages")
    argv = [
        "--variant=minbase",
        f"--cache-dir={debs_cache}",
        f"--include={','.join(spec.packages)}",
        spec.suite,
        str(root),
        mirror,
    ]
    log = log or work_dir / "debootstrap.log"
    _run_with_progress(tools["debootstrap"], argv, progress, log=log)

    progress("phase=configure trimming docs and apt caches")
    packages = _installed_packages(root)
    _configure_root(root, spec, mirror)

    progress(f"phase=image mkfs.ext4 ({spec.disk_size_mib} MiB sparse)")
    tmp = output.with_name(output.name + ".partial")
    _run(
        host_tools.MKFS_EXT4,
        ["-q", "-F", "-L", "pyro-root", "-d", root, tmp, f"{spec.disk_size_mib}M"],
        what="mkfs.ext4",
    )
    tmp.rename(output)
    shutil.rmtree(root, ignore_errors=True)
    return packages


def _installed_packages(root: Path) -> dict[str, str]:
    result = host_tools.run(
        host_tools.CHROOT,
        [root, "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
    )
    if result.returncode != 0:
        raise EnvironmentBuildError(
            f"listing the packages of the new root filesystem failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        )
    packages: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition("\t")
        if name:
            packages[name] = version
    return packages


def _configure_root(root: Path, spec: EnvironmentSpec, mirror: str) -> None:
    for trash in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        path = root / trash
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                elif child.name != "lock":
                    child.unlink(missing_ok=True)
    (root / "etc" / "apt" / "sources.list").write_text(
        f"deb {mirror} {spec.suite} main\ndeb {mirror} {spec.suite}-updates main\n"
    )
    (root / "etc" / "hostname").write_text("pyro\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n::1\tlocalhost\n")
    (root / "workspace").mkdir(exist_ok=True)


# ------------------------------------------------------------------- helpers


def _run(
    tool: host_tools.HostTool,
    args: list[str | os.PathLike[str]],
    what: str,
    cwd: Path | None = None,
) -> None:
    result = host_tools.run(tool, args, cwd=cwd, capture_output=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise EnvironmentBuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _run_with_progress(program: Path, argv: list[str], progress: Progress, log: Path) -> None:
    """Run debootstrap, relaying a condensed count of its steps."""
    counts = {"Retrieving": 0, "Extracting": 0, "Unpacking": 0, "Configuring": 0}
    last_report = time.monotonic()
    tail: list[str] = []
    with (
        log.open("w") as log_file,
        host_tools.popen(
            program, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            tail = [*tail[-14:], line.rstrip()]
            for key in counts:
                if line.startswith(f"I: {key} "):
                    counts[key] += 1
            if time.monotonic() - last_report >= 3:
                last_report = time.monotonic()
                summary = " ".join(f"{k.lower()}={v}" for k, v in counts.items())
                progress(f"phase=rootfs {summary}")
        code = process.wait()
    if code != 0:
        joined = "\n".join(tail)
        raise EnvironmentBuildError(
            f"debootstrap failed (exit {code}); last lines:\n{joined}\nFull log: {log}"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
