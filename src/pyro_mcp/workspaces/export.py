"""Directory export in proportion to the change.

A workspace's disk is its baseline plus what changed since. The baseline is
an ext4 image on the host (``baseline.ext4``, read-only), so a directory
export takes the unchanged part from there with ``debugfs rdump`` (native
code, no guest) and asks the guest to pack only the entries its change record
names. Exporting a 10,000-file project with three files changed no longer
packs, sends and checks 10,000 files.

The result is what the full pack (``transfer.fetch_tree`` +
``transfer.extract_export``) gives: the same tree, file modes as tarfile's
``data`` filter leaves them, directories with the default mode, no owners,
links that leave the export refused, devices and fifos refused, ignored paths
left out. When this path cannot be taken (no baseline, a name ``debugfs``
cannot spell, the exported directory itself changed) the caller uses the full
pack.

The guest's change list is untrusted: every path it names is checked to stay
inside the dumped tree, never through a symlink, before anything is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.errors import AgentProtocolError
from pyro_mcp.workspaces import replies, transfer

# Names ``debugfs -R`` cannot take as one argument.
_UNSPELLABLE = frozenset(" \t\n\"'\\")
# Top-level entries of /workspace that are never part of it (the guest's diff skips them too).
_NOT_WORKSPACE = ("lost+found",)
# Changes whose entry the guest packs whole, with everything below it.
_WHOLE = ("added", "type_changed")


def export_directory(
    client: SupervisorClient, baseline: Path, top: str, output: Path, left_out: list[str]
) -> dict[str, Any] | None:
    """Place the directory ``top`` (relative to /workspace) at ``output``
    (checked by ``transfer.check_output``); None when only the full pack will do.

    ``left_out`` names ignored paths (relative to /workspace) to leave out.

    Raises:
        AgentProtocolError: a change or an archive member breaks the rules above.
    """
    if not _dumpable(baseline, top):
        return None
    with tempfile.TemporaryDirectory(prefix=".pyro-export-", dir=output.parent) as tmp:
        tree = _dump(baseline, top, Path(tmp))
        if tree is None:
            return None  # not a directory in the baseline
        listing = replies.check_diff(guest.diff(client, {"patch": False, "collapse": True}))
        changed = [c for c in listing["changes"] if _under(c["path"], top)]
        if any(_under(top, c["path"]) for c in listing["changes"]):
            return None  # the directory itself was added, deleted or changed type
        excluded = [p for p in left_out if _under(p, top)]
        for path in excluded:
            _remove(tree, _relative(path, top))
        members: list[str] = []
        trees: list[str] = []
        for change in changed:
            relative = _relative(change["path"], top)
            directory_mode = change["type"] == "directory" and change["status"] == "mode_changed"
            if directory_mode or any(_under(change["path"], p) for p in excluded):
                continue  # the data filter never applies a directory's mode; ignored
            _remove(tree, relative)
            if change["status"] != "deleted":
                whole = change["type"] == "directory" and change["status"] in _WHOLE
                (trees if whole else members).append(str(relative))
        files, total = _settle(tree)
        if members or trees:
            archive, _ = transfer.fetch_tree(
                client, top, Path(tmp), exclude=excluded, members=members, trees=trees
            )
            added, added_bytes = _extract_over(archive, tree, files)
            files, total = files + added, total + added_bytes
        if total > transfer.MAX_EXPORT_BYTES:
            raise AgentProtocolError("the export is larger than allowed")
        transfer.replace_output(tree, output)
    return {"output": str(output), "type": "directory", "files": files, "bytes": total}


def _dumpable(baseline: Path, top: str) -> bool:
    parts = PurePosixPath(top).parts
    return (
        baseline.is_file()
        and top.isprintable()
        and not any(c in _UNSPELLABLE for c in top)
        and not (parts and parts[0] in _NOT_WORKSPACE)
    )


def _under(path: str, top: str) -> bool:
    return top == "." or path == top or path.startswith(top + "/")


def _relative(path: str, top: str) -> PurePosixPath:
    relative = PurePosixPath(path if top == "." else path[len(top) + 1 :])
    if relative.is_absolute() or not relative.parts or ".." in relative.parts:
        raise AgentProtocolError(f"the guest named a change at {path!r}")
    return relative


def _dump(baseline: Path, top: str, work: Path) -> Path | None:
    """The baseline's ``top`` dumped under ``work``; None if it is not a directory there."""
    scratch = work / "dump"
    scratch.mkdir()
    source = "/" if top == "." else f"/{top}"
    result = host_tools.run(
        host_tools.DEBUGFS,
        ["-R", f"rdump {source} {scratch}", baseline],
        capture_output=True,
        errors="replace",
        timeout=600,
    )
    problems = [line for line in result.stderr.splitlines() if not line.startswith("debugfs ")]
    tree = scratch if top == "." else scratch / PurePosixPath(top).name
    if result.returncode != 0 or problems or tree.is_symlink() or not tree.is_dir():
        return None
    if top == ".":
        for name in _NOT_WORKSPACE:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tree / name)
    moved = work / "tree"
    tree.rename(moved)
    return moved


def _remove(tree: Path, relative: PurePosixPath) -> None:
    """Remove ``tree/relative`` if there, refusing a path that goes through a symlink."""
    target = tree / relative
    expected = os.path.normpath(os.path.join(os.path.realpath(tree), relative.parent))
    if os.path.realpath(target.parent) != expected:
        raise AgentProtocolError(f"the change at {str(relative)!r} goes through a symlink")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()


def _settle(tree: Path) -> tuple[int, int]:
    """Give the dumped baseline what tarfile's data filter gives an extracted
    archive; return its file count and bytes.

    Regular files: high bits and group/other write cleared, owner read and
    write added, execute cleared for all when the owner has none. Directories:
    the default mode. Owners: whoever runs pyro. Links leaving the export,
    devices and fifos: refused.
    """
    probe = tree.parent / "probe"
    probe.mkdir()
    directory_mode = stat.S_IMODE(probe.stat().st_mode)
    probe.rmdir()
    uid, gid = os.geteuid(), os.getegid()
    files = total = entries = 0
    for current, dirs, names in os.walk(tree):
        for name in [*dirs, *names]:
            path = os.path.join(current, name)
            info = os.lstat(path)
            entries += 1
            relative = PurePosixPath(os.path.relpath(path, tree))
            if stat.S_ISLNK(info.st_mode):
                target = PurePosixPath(os.readlink(path))
                if target.is_absolute() or not transfer.stays_inside(relative.parent / target):
                    raise AgentProtocolError(
                        f"the link {str(relative)!r} -> {str(target)!r} leaves the output"
                    )
            elif stat.S_ISREG(info.st_mode):
                mode = stat.S_IMODE(info.st_mode) & 0o755
                if not mode & 0o100:
                    mode &= ~0o011
                os.chmod(path, mode | 0o600)
                files, total = files + 1, total + info.st_size
            elif stat.S_ISDIR(info.st_mode):
                os.chmod(path, directory_mode)
            else:
                raise AgentProtocolError(f"{str(relative)!r} is a device, fifo or socket")
            if (info.st_uid, info.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
        if entries > transfer.MAX_EXPORT_MEMBERS:
            raise AgentProtocolError(
                f"the export has more than {transfer.MAX_EXPORT_MEMBERS} entries"
            )
    return files, total


def _extract_over(archive: Path, tree: Path, already: int) -> tuple[int, int]:
    """Extract the guest's archive of changed entries into ``tree``; its file count and bytes."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            if len(members) + already > transfer.MAX_EXPORT_MEMBERS:
                raise AgentProtocolError(
                    f"the export has more than {transfer.MAX_EXPORT_MEMBERS} entries"
                )
            total = transfer.check_members(members)
            tar.extractall(tree, members=members, filter="data")
    except tarfile.TarError as exc:
        raise AgentProtocolError(f"the guest sent an unreadable archive: {exc}") from exc
    return sum(m.isfile() for m in members), total
