"""The diff of /workspace against its baseline (standard library only).

Structured changes and a unified patch ``git apply`` takes, binary files
included. It looks only where ``changes.py``'s record says something happened,
or walks both trees when that record cannot be trusted. The roots are
``fileops.WORKSPACE`` and ``fileops.BASELINE``, read at call time.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import os
import stat
import zlib
from typing import Any

try:
    from pyro_mcp.guest import changes, fileops
except ImportError:  # inside the guest, beside this file
    import changes  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]

MAX_DIFF_TEXT_BYTES = 1024 * 1024
MAX_PATCH_TEXT = 4 * 1024 * 1024


def op_diff(args: dict[str, Any]) -> dict[str, Any]:
    """Changes of /workspace against the baseline: structured list and unified patch.

    ``exclude`` names paths (relative to /workspace) to leave out, with
    everything below them; ``git_binary`` writes binary files as Git binary
    patches (so ``git apply`` takes them) instead of a one-line marker;
    ``patch: false`` skips the patch text, and ``collapse`` lists a directory
    added or deleted whole as itself alone. Looks only where the change record
    (``changes.py``) says something happened, or walks both trees when that
    record cannot be trusted (or ``walk`` asks for it); with ``explain``,
    ``walked`` says which.
    """
    if not os.path.isdir(fileops.BASELINE):
        raise fileops.RequestError("no_baseline", "this workspace has no baseline mounted")
    exclude = fileops.path_set(args.get("exclude"))
    git_binary = bool(args.get("git_binary"))
    with changes.TRACKER.diffing:
        directories, handles = changes.TRACKER.take()
        if args.get("walk"):  # asked for the full walk (a benchmark's slow side)
            directories = None
        try:
            view = _changed_view(directories) if directories is not None else None
            if view is None:
                directories = None
                view = _snapshot(fileops.BASELINE), _snapshot(fileops.WORKSPACE)
            old, new = view
            found = [
                change
                for path in sorted(set(old) | set(new))
                if (change := _compare(path, old.get(path), new.get(path))) is not None
            ]
        except BaseException:
            changes.TRACKER.give_back(handles, full=directories is None)
            raise
        changes.TRACKER.settle(_outermost(found))
    shown: list[dict[str, Any]] = []
    patch: list[str] = []
    patch_bytes = 0
    patch_truncated = False
    whole: set[str] = set()  # with ``collapse``: directories added or deleted whole
    for change in found:
        path = change["path"]
        if _excluded(path, exclude) or _excluded(path, whole):
            continue
        collapses = change["type"] == "directory" and change["status"] in ("added", "deleted")
        if collapses and args.get("collapse"):
            whole.add(path)
        shown.append(change)
        if patch_truncated or args.get("patch") is False:
            continue
        text = _unified(path, old.get(path), new.get(path), change, git_binary)
        if patch_bytes + len(text) > MAX_PATCH_TEXT:
            patch_truncated = True
        else:
            patch.append(text)
            patch_bytes += len(text)
    reply = {"changes": shown, "patch": "".join(patch), "patch_truncated": patch_truncated}
    if args.get("explain"):
        reply["walked"] = directories is None
    return reply


def _excluded(path: str, exclude: set[str]) -> bool:
    if not exclude:
        return False
    parts = path.split("/")
    return any("/".join(parts[:depth]) in exclude for depth in range(1, len(parts) + 1))


# What a diff compares: (type bits, permission bits, size, inode, mtime, ctime, links).
# The workspace disk is a copy-on-write overlay of the baseline's filesystem, so a
# file the guest never touched has the very same inode, times and size on both sides.
Info = tuple[int, int, int, int, int, int, int]


def _info(path: str) -> Info | None:
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (
        stat.S_IFMT(info.st_mode),
        stat.S_IMODE(info.st_mode),
        info.st_size,
        info.st_ino,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_nlink,
    )


def _snapshot(root: str, skip: tuple[str, ...] = fileops.IGNORED) -> dict[str, Info]:
    """Every path under ``root`` (relative to it) and its ``Info``; ``skip``
    leaves out those top-level names."""
    found: dict[str, Info] = {}
    for current, dirs, files in os.walk(root):
        if current == root:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            full = os.path.join(current, name)
            info = _info(full)
            if info is not None:
                found[os.path.relpath(full, root)] = info
    return found


def _changed_view(paths: set[str]) -> tuple[dict[str, Info], dict[str, Info]] | None:
    """Both sides' ``Info`` of every path a change could be at, given the paths
    the change record names; None when only a full walk will do.

    Each named path is looked at on both sides. A directory present on both
    sides with the same inode and ctime has the same entries (anything changed
    inside it is named itself); otherwise its entries are looked at too, and a
    directory on one side only is taken whole.
    """
    old: dict[str, Info] = {}
    new: dict[str, Info] = {}
    pending, seen = sorted(paths), set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if not path:  # the root: its entries
            names = _entries(fileops.BASELINE, "") | _entries(fileops.WORKSPACE, "")
            pending.extend(sorted(names - set(fileops.IGNORED)))
            continue
        before = _info(os.path.join(fileops.BASELINE, path))
        after = _info(os.path.join(fileops.WORKSPACE, path))
        for side, info in ((old, before), (new, after)):
            if info is not None:
                side[path] = info
        before_dir = before is not None and stat.S_ISDIR(before[0])
        after_dir = after is not None and stat.S_ISDIR(after[0])
        if before_dir and after_dir:
            if before is not None and after is not None and before[3:6] != after[3:6]:
                # Entries added, removed or renamed in it: look at each.
                names = _entries(fileops.BASELINE, path) | _entries(fileops.WORKSPACE, path)
                pending.extend(os.path.join(path, name) for name in sorted(names))
            continue
        if before_dir:
            old.update(_subtree(fileops.BASELINE, path))
        if after_dir:
            new.update(_subtree(fileops.WORKSPACE, path))
    for side in (old, new):
        if any(stat.S_ISREG(info[0]) and info[6] > 1 for info in side.values()):
            return None  # a hard link: a change may show under a name not looked at
    return old, new


def _outermost(found: list[dict[str, Any]]) -> list[str]:
    """The changed paths, a directory added or deleted whole standing for all below it."""
    whole: set[str] = set()
    kept = []
    for change in found:  # sorted by path: a directory comes before what is in it
        path = change["path"]
        if _excluded(path, whole):
            continue
        kept.append(path)
        if change["type"] == "directory" and change["status"] in ("added", "deleted"):
            whole.add(path)
    return kept


def _entries(root: str, here: str) -> set[str]:
    try:
        return set(os.listdir(os.path.join(root, here)))
    except (NotADirectoryError, FileNotFoundError):
        return set()


def _subtree(root: str, top: str) -> dict[str, Info]:
    below = _snapshot(os.path.join(root, top), skip=())
    return {os.path.join(top, path): info for path, info in below.items()}


def _compare(path: str, before: Any, after: Any) -> dict[str, Any] | None:
    if before is None:
        return {
            "path": path,
            "status": "added",
            "type": fileops.kind(after[0]),
            "binary": _file_is_binary(fileops.WORKSPACE, path, after),
        }
    if after is None:
        return {
            "path": path,
            "status": "deleted",
            "type": fileops.kind(before[0]),
            "binary": _file_is_binary(fileops.BASELINE, path, before),
        }
    if before[0] != after[0]:
        return {
            "path": path,
            "status": "type_changed",
            "type": fileops.kind(after[0]),
            "old_type": fileops.kind(before[0]),
            "binary": False,
        }
    # The same inode with the same times was never written to since the baseline.
    untouched = before[3:6] == after[3:6]
    content_changed = not untouched and _content_differs(path, before, after)
    mode_changed = before[1] != after[1] and not stat.S_ISLNK(after[0])
    if not content_changed and not mode_changed:
        return None
    change: dict[str, Any] = {
        "path": path,
        "status": "modified",
        "type": fileops.kind(after[0]),
        "binary": _file_is_binary(fileops.WORKSPACE, path, after),
    }
    if mode_changed:
        change["old_mode"], change["mode"] = before[1], after[1]
    if not content_changed:
        change["status"] = "mode_changed"
    return change


def _content_differs(path: str, before: Info, after: Info) -> bool:
    if stat.S_ISREG(after[0]):
        return before[2] != after[2] or not _same_bytes(path)
    if stat.S_ISLNK(after[0]):
        baseline, workspace = fileops.BASELINE, fileops.WORKSPACE
        return os.readlink(os.path.join(baseline, path)) != os.readlink(
            os.path.join(workspace, path)
        )
    return False


def _same_bytes(path: str) -> bool:
    with (
        open(os.path.join(fileops.BASELINE, path), "rb") as a,
        open(os.path.join(fileops.WORKSPACE, path), "rb") as b,
    ):
        while True:
            x, y = a.read(1 << 16), b.read(1 << 16)
            if x != y:
                return False
            if not x:
                return True


def _file_is_binary(root: str, path: str, info: tuple[int, int, int]) -> bool:
    if not stat.S_ISREG(info[0]):
        return False
    with open(os.path.join(root, path), "rb") as handle:
        return fileops.is_binary(handle.read(8192))


def _unified(
    path: str, before: Any, after: Any, change: dict[str, Any], git_binary: bool = False
) -> str:
    """One path's part of the patch, in the form ``git apply`` reads."""
    header = f"diff --git a/{path} b/{path}\n"
    if before is None:
        header += f"new file mode {_git_mode(after)}\n"
    elif after is None:
        header += f"deleted file mode {_git_mode(before)}\n"
    elif change.get("old_mode") is not None:
        header += f"old mode {_git_mode(before)}\nnew mode {_git_mode(after)}\n"
    if change["type"] == "directory" or change["status"] == "type_changed":
        return ""  # Git has no directories; a type change shows as its own paths
    if change["type"] == "other":
        return ""
    if change["status"] == "mode_changed":
        return header
    if change.get("binary"):
        if not git_binary:
            return f"Binary files a/{path} and b/{path} differ\n"
        return header + _binary_patch(path, before, after)
    old_lines = _lines(fileops.BASELINE, path, before)
    new_lines = _lines(fileops.WORKSPACE, path, after)
    if old_lines is None or new_lines is None:
        return f"(a/{path} is too large for a text diff)\n"
    body = difflib.unified_diff(
        old_lines,
        new_lines,
        fromfile="/dev/null" if before is None else f"a/{path}",
        tofile="/dev/null" if after is None else f"b/{path}",
    )
    lines = []
    for line in body:
        if line.endswith("\n"):
            lines.append(line)
        else:
            lines.append(line + "\n\\ No newline at end of file\n")
    return header + "".join(lines)


def _git_mode(info: tuple[int, int, int]) -> str:
    if stat.S_ISLNK(info[0]):
        return "120000"
    return "100755" if info[1] & 0o111 else "100644"


def _content(root: str, path: str, info: Any) -> bytes:
    if info is None:
        return b""
    full = os.path.join(root, path)
    if stat.S_ISLNK(info[0]):
        return os.readlink(full).encode()
    with open(full, "rb") as handle:
        return handle.read(MAX_PATCH_TEXT + 1)


def _binary_patch(path: str, before: Any, after: Any) -> str:
    """A Git binary patch: both blobs' ids, the new content and the old one, deflated."""
    old, new = _content(fileops.BASELINE, path, before), _content(fileops.WORKSPACE, path, after)
    if len(old) > MAX_PATCH_TEXT or len(new) > MAX_PATCH_TEXT:
        return f"(a/{path} is too large for a binary patch)\n"
    index = f"index {_blob_id(old) if before else ZERO_ID}..{_blob_id(new) if after else ZERO_ID}"
    if before is not None and after is not None:
        index += f" {_git_mode(after)}"
    return f"{index}\nGIT binary patch\n{_literal(new)}\n{_literal(old)}\n"


ZERO_ID = "0" * 40
_LENGTH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _literal(data: bytes) -> str:
    """``literal SIZE`` and the deflated bytes in Git's base85 lines (52 bytes each)."""
    packed = zlib.compress(data, 9)
    lines = [f"literal {len(data)}"]
    for start in range(0, len(packed), 52):
        chunk = packed[start : start + 52]
        lines.append(_LENGTH_CHARS[len(chunk) - 1] + base64.b85encode(chunk, pad=True).decode())
    return "\n".join(lines) + "\n"


def _lines(root: str, path: str, info: Any) -> list[str] | None:
    if info is None:
        return []
    if info[2] > MAX_DIFF_TEXT_BYTES:
        return None
    return _content(root, path, info).decode("utf-8", errors="replace").splitlines(keepends=True)


OPERATIONS = {"diff": op_diff}
