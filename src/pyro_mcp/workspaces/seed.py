"""Staging a workspace seed (a directory or a tar archive) on the host.

The staged tree becomes the workspace's baseline disk. Nothing from outside
the seed is ever copied: symlinks that resolve outside the seed root are not
followed (they are skipped and counted), and archive members with absolute
names, ``..`` components, links escaping the root, or device files are refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp.errors import InvalidArgument

MAX_SEED_BYTES = 2 * 1024 * 1024 * 1024
MAX_SEED_FILES = 200_000
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class SeedInfo:
    """What went into a workspace at create time (shown in its status)."""

    kind: str  # "empty", "directory", "archive" or "project"
    source: str | None
    file_count: int
    bytes: int
    skipped_links: int = 0
    skipped_unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_seed(source: Path | None, staging: Path, only: list[str] | None = None) -> SeedInfo:
    """Copy ``source`` into the empty directory ``staging``.

    ``only`` limits a directory seed to those relative paths (a project's
    Git-tracked files); listed files that are missing or unreadable in the
    working tree are skipped and counted, never fatal.

    Raises:
        InvalidArgument: the seed is missing, of an unsupported kind, too large,
            or an archive with unsafe members. Nothing is left in ``staging``'s
            place worth keeping; the caller removes it.
    """
    staging.mkdir(parents=True, exist_ok=True)
    if source is None:
        return SeedInfo("empty", None, 0, 0)
    source = Path(source).expanduser().absolute()
    if not source.exists():
        raise InvalidArgument("seed_path", f"{source} does not exist")
    if source.is_dir():
        if only is not None:
            return _stage_listed(source, staging, only)
        return _stage_directory(source, staging)
    if source.is_file() and source.name.endswith(ARCHIVE_SUFFIXES):
        return _stage_archive(source, staging)
    raise InvalidArgument(
        "seed_path",
        f"{source} is neither a directory nor a .tar/.tar.gz/.tgz archive",
    )


def _stage_directory(root: Path, staging: Path) -> SeedInfo:
    real_root = root.resolve()
    files = total = skipped = 0
    for current, dirs, names in os.walk(root, followlinks=False):
        here = Path(current)
        relative = here.relative_to(root)
        target_dir = staging / relative
        for name in [*dirs, *names]:
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                link = os.readlink(path)
                resolved = (here / link).resolve()
                if resolved != real_root and real_root not in resolved.parents:
                    skipped += 1
                    if name in dirs:
                        dirs.remove(name)
                    continue
                (target_dir / name).symlink_to(link)
                if name in dirs:
                    dirs.remove(name)  # never walk through a link
                files += 1
            elif stat.S_ISDIR(mode):
                (target_dir / name).mkdir(mode=stat.S_IMODE(mode) | 0o700)
            elif stat.S_ISREG(mode):
                size = path.lstat().st_size
                files, total = files + 1, total + size
                _check_bounds(files, total)
                shutil.copy2(path, target_dir / name, follow_symlinks=False)
            # sockets, fifos and devices are not seed material: skipped
    return SeedInfo("directory", str(root), files, total, skipped)


def _stage_listed(root: Path, staging: Path, paths: list[str]) -> SeedInfo:
    real_root = root.resolve()
    files = total = skipped_links = unreadable = 0
    for relative in paths:
        parts = PurePosixPath(relative).parts
        if not parts or ".." in parts or PurePosixPath(relative).is_absolute():
            continue
        source, target = root / relative, staging / relative
        try:
            mode = source.lstat().st_mode
            if stat.S_ISLNK(mode):
                resolved = (source.parent / os.readlink(source)).resolve()
                if resolved != real_root and real_root not in resolved.parents:
                    skipped_links += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(os.readlink(source))
                files += 1
            elif stat.S_ISREG(mode):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target, follow_symlinks=False)
                files, total = files + 1, total + source.lstat().st_size
                _check_bounds(files, total)
            # a submodule (a directory) or anything else is not seed material
        except (FileNotFoundError, PermissionError):
            unreadable += 1
    return SeedInfo("project", str(root), files, total, skipped_links, unreadable)


def _stage_archive(archive: Path, staging: Path) -> SeedInfo:
    files = total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
                if member.isfile():
                    files, total = files + 1, total + member.size
                    _check_bounds(files, total)
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgument(
            "seed_path", f"{archive} is not a readable tar archive: {exc}"
        ) from exc
    return SeedInfo("archive", str(archive), files, total)


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise InvalidArgument(
            "seed_path", f"archive member {member.name!r} points outside the workspace"
        )
    if member.isdev() or member.isfifo():
        raise InvalidArgument("seed_path", f"archive member {member.name!r} is a device or fifo")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = name.parent if member.issym() else PurePosixPath()
        resolved = _normalise(base / target)
        if target.is_absolute() or resolved is None:
            raise InvalidArgument(
                "seed_path",
                f"archive link {member.name!r} -> {member.linkname!r} escapes the workspace",
            )


def _normalise(path: PurePosixPath) -> PurePosixPath | None:
    """``path`` with ``..`` applied, or None if it climbs above the root."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return PurePosixPath(*parts)


def _check_bounds(files: int, total: int) -> None:
    if files > MAX_SEED_FILES:
        raise InvalidArgument("seed_path", f"the seed has more than {MAX_SEED_FILES} files")
    if total > MAX_SEED_BYTES:
        raise InvalidArgument("seed_path", f"the seed is larger than {MAX_SEED_BYTES // 2**30} GiB")
