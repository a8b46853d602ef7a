"""Paths, defaults and environment variables, read in one place."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VCPU_COUNT = 1
DEFAULT_MEM_MIB = 1024
DEFAULT_TIMEOUT_SECONDS = 30
# How long a one-shot VM (vm_run) may exist at most, whatever happens.
DEFAULT_VM_TTL_SECONDS = 600
DEFAULT_ENVIRONMENT = "debian:12"

# How much of each output stream a command may return. The guest enforces it
# and the host checks it again, because the guest is not trusted.
MAX_OUTPUT_BYTES = 1024 * 1024

# A booted guest must reach its agent within this bound. Under TCG a cold boot
# takes about 4 s on the project's machines; two of them at once on two cores
# take longer, so the bound is generous.
BOOT_TIMEOUT_SECONDS = 90.0

# A warm restore answers in a fraction of a second; one that has not reached a
# ready agent within this bound is killed and the start falls back to a cold
# boot once. Generous for a loaded 2-core host running TCG guests.
RESTORE_TIMEOUT_SECONDS = 20.0

# Every workspace disk (and its baseline) has this virtual size: a warm snapshot
# is taken with stand-ins of the same size, and a restored guest needs the
# disks it sees to keep the size it probed. Sparse: only what is written costs.
WORKSPACE_DISK_MIB = 8192


@dataclass(frozen=True)
class Paths:
    """Where pyro keeps its state (records, VMs) and its caches (environments)."""

    state_dir: Path
    cache_dir: Path
    # Where warm snapshots live (default ``cache_dir/warm``). ``pyro server``
    # gives each principal its own, so no two principals' guests map one file.
    warm_dir: Path | None = None

    @property
    def warm_root(self) -> Path:
        return self.warm_dir or self.cache_dir / "warm"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "pyro.db"

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def environments_dir(self) -> Path:
        return self.cache_dir / "environments"

    def ensure(self) -> None:
        """Create the directories, private to the user (0700) whatever the umask."""
        for path in (self.state_dir, self.cache_dir, self.vms_dir, self.environments_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (self.state_dir, self.cache_dir):
            if path.stat().st_mode & 0o777 != 0o700:
                path.chmod(0o700)


def default_paths() -> Paths:
    """Paths from ``PYRO_HOME`` / ``PYRO_CACHE_DIR`` or the XDG defaults."""
    home = Path.home()
    pyro_home = os.environ.get("PYRO_HOME")
    if pyro_home:
        state = Path(pyro_home)
    else:
        state = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "pyro"
    cache_env = os.environ.get("PYRO_CACHE_DIR")
    if cache_env:
        cache = Path(cache_env)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "pyro"
    return Paths(state_dir=state.absolute(), cache_dir=cache.absolute())


def accel_override() -> str | None:
    """``PYRO_ACCEL`` (kvm or tcg) when set."""
    value = os.environ.get("PYRO_ACCEL", "").strip().lower()
    return value or None


def debian_mirror_override() -> str | None:
    """``PYRO_DEBIAN_MIRROR`` when set."""
    value = os.environ.get("PYRO_DEBIAN_MIRROR", "").strip()
    return value or None


# A workspace a chat creates and forgets is reaped after this long without
# activity (`pyro mcp serve --default-ttl-seconds`, 0 = never). The CLI and
# SDK keep "never" as their default.
MCP_DEFAULT_TTL_SECONDS = 24 * 3600

# What a running guest is assumed to cost when sizing the default cap on
# running VMs: a cold-booted 1 GiB guest holds ~310 MB under TCG (a warm one
# less); the cap leaves the host room for itself.
GUEST_BUDGET_MIB = 512
MIN_RUNNING_CAP = 4


# Below this much free space where PYRO_HOME lives, doctor and workspace
# create warn: one more workspace may write about this much (root disk changes,
# /workspace, snapshots).
LOW_SPACE_BYTES = 1024 * 1024 * 1024


def low_space_warning(state_dir: Path) -> str | None:
    """A warning when PYRO_HOME's filesystem has less than ``LOW_SPACE_BYTES`` free."""
    try:
        stat = os.statvfs(state_dir)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    if free >= LOW_SPACE_BYTES:
        return None
    return (
        f"only {free // 2**20} MiB free on the filesystem of PYRO_HOME ({state_dir}); a "
        f"workspace may need about {LOW_SPACE_BYTES // 2**20} MiB. When it fills, guests get "
        "I/O errors and pyro cannot record anything: delete workspaces you no longer need "
        "or free space there"
    )


# Space pyro holds back under PYRO_HOME so a guest whose disk filled the host can
# be brought back: mounting its ext4 again replays the journal, which needs
# room, and only then can ``rm`` in the guest free the rest.
RESERVE_BYTES = 32 * 1024 * 1024
RESERVE_NAME = "space-reserve"


def keep_reserve(state_dir: Path) -> None:
    """Hold ``RESERVE_BYTES`` under PYRO_HOME while there is plenty of room."""
    reserve = state_dir / RESERVE_NAME
    try:
        if reserve.exists():
            return
        stat = os.statvfs(state_dir)
        if stat.f_bavail * stat.f_frsize < 4 * RESERVE_BYTES:
            return
        fd = os.open(reserve.with_suffix(".partial"), os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
        os.replace(reserve.with_suffix(".partial"), reserve)
    except OSError:
        with contextlib.suppress(OSError):
            reserve.with_suffix(".partial").unlink()


def release_reserve(state_dir: Path) -> bool:
    """Give the reserve back to the filesystem; True if there was one."""
    try:
        (state_dir / RESERVE_NAME).unlink()
    except OSError:
        return False
    return True


# Below this much free space, pyro trims /workspace after each command (so
# files a command deleted give their space back at once).
TRIM_BELOW_BYTES = 128 * 1024 * 1024


def space_is_low(state_dir: Path) -> bool:
    try:
        stat = os.statvfs(state_dir)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < TRIM_BELOW_BYTES


def disk_full_message(state_dir: Path) -> str:
    """What to say when PYRO_HOME's filesystem is full: where, how much, what to free."""
    free = "unknown"
    try:
        stat = os.statvfs(state_dir)
        free = f"{stat.f_bavail * stat.f_frsize // 2**20} MiB free"
    except OSError:
        pass
    return (
        f"the disk holding pyro's state (PYRO_HOME, {state_dir}) is full ({free}), "
        "so pyro cannot record anything. Free space on that filesystem: delete "
        "workspaces you no longer need (`pyro workspace delete WS`: it frees their disks "
        "first), their snapshots, or files inside a workspace (its disk gives the space "
        "back); then retry."
    )


def max_running_vms(meminfo: Path = Path("/proc/meminfo")) -> int:
    """How many VMs (workspaces included) may run at once on this host.

    ``PYRO_MAX_RUNNING`` when set; otherwise three quarters of the host's memory
    divided by ``GUEST_BUDGET_MIB`` (36 on a 24 GiB host), at least
    ``MIN_RUNNING_CAP``.
    """
    override = os.environ.get("PYRO_MAX_RUNNING", "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            pass
    total_kib = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return MIN_RUNNING_CAP * 4
    return max(MIN_RUNNING_CAP, (total_kib * 3 // 4) // 1024 // GUEST_BUDGET_MIB)


def warm_enabled() -> bool:
    """False when ``PYRO_WARM=0``: every start cold-boots (comparison, debugging)."""
    return _switched_on("PYRO_WARM")


def layers_on_host() -> bool:
    """Whether an image's first layer may be unpacked on the host (as root, into a
    private folder; ``vm/image_builder.py``) instead of in the building guest.
    ``PYRO_LAYERS_ON_HOST=0`` keeps every layer in the guest (comparison, or a
    host whose policy forbids it); without root the guest does it anyway."""
    return _switched_on("PYRO_LAYERS_ON_HOST") and hasattr(os, "geteuid") and os.geteuid() == 0


def memory_merge_enabled() -> bool:
    """False when ``PYRO_MEMORY_MERGE=off``: pyro leaves the host's same-page merging
    (KSM) as it finds it instead of turning it on (vm/merge.py)."""
    return _switched_on("PYRO_MEMORY_MERGE")


def _switched_on(variable: str) -> bool:
    """An on-by-default switch: off only when ``variable`` is 0, false, no or off."""
    return os.environ.get(variable, "").strip().lower() not in ("0", "false", "no", "off")


def environment_registry() -> str | None:
    """``PYRO_ENVIRONMENT_REGISTRY``: where curated environments are pulled from
    (``HOST[:PORT]/PATH``) instead of built; None to build them locally."""
    value = os.environ.get("PYRO_ENVIRONMENT_REGISTRY", "").strip().removeprefix("docker://")
    return value.rstrip("/") or None


def audit_max_bytes() -> int:
    """``PYRO_AUDIT_MAX_MIB``: the size at which ``pyro server`` rotates its audit
    trail (default 16 MiB; four old files are kept)."""
    value = os.environ.get("PYRO_AUDIT_MAX_MIB", "").strip()
    try:
        mib = float(value) if value else 16.0
    except ValueError:
        mib = 16.0
    return max(4096, int(mib * 1024 * 1024))


def qemu_override() -> str | None:
    """``PYRO_QEMU``: the QEMU binary to use instead of the one on PATH."""
    value = os.environ.get("PYRO_QEMU", "").strip()
    return value or None


# A running workspace idle this long is suspended (its memory saved, its VM
# process gone); the next call that needs it resumes it. Per workspace with
# ``idle_suspend_seconds`` (0: never), server-wide with `pyro mcp serve
# --idle-suspend-seconds`.
DEFAULT_IDLE_SUSPEND_SECONDS = 300
MAX_IDLE_SUSPEND_SECONDS = 365 * 86400
