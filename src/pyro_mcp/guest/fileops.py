"""File operations of the guest agent, scoped to /workspace (standard library only).

Every path a request names must resolve (symlinks included) inside the
workspace root. Large transfers go through a staging file under /tmp that the
host reads or writes in bounded chunks.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import os
import stat
import tarfile
import tempfile
import zlib
from typing import Any

try:
    from pyro_mcp.guest import changes
except ImportError:  # inside the guest, beside this file
    import changes  # type: ignore[import-not-found,no-redef]

WORKSPACE = "/workspace"
BASELINE = "/run/pyro/baseline"
STAGING = "/tmp/.pyro-transfer"
MAX_CHUNK = 4 * 1024 * 1024
MAX_LIST_ENTRIES = 10000
MAX_DIFF_TEXT_BYTES = 1024 * 1024
MAX_PATCH_TEXT = 4 * 1024 * 1024
IGNORED = ("lost+found",)


class RequestError(Exception):
    """A request the agent refuses; becomes an error reply, not a crash."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------ paths


def scoped(path: Any, must_exist: bool = False) -> str:
    """``path`` made absolute under /workspace; refused if it resolves outside."""
    root = WORKSPACE
    if not isinstance(path, str) or not path or "\0" in path:
        raise RequestError("bad_path", "path must be a non-empty string")
    absolute = os.path.normpath(os.path.join(root, path))
    real = os.path.realpath(absolute)
    if real != root and not real.startswith(root + "/"):
        raise RequestError("outside_workspace", f"{path!r} resolves outside {root}")
    if must_exist and not os.path.lexists(absolute):
        raise RequestError("not_found", f"{_rel(absolute)} does not exist")
    return absolute


def _rel(path: str) -> str:
    relative = os.path.relpath(path, WORKSPACE)
    return "." if relative == "." else relative


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


# ------------------------------------------------------------ list / read


def op_file_list(args: dict[str, Any]) -> dict[str, Any]:
    top = scoped(args.get("path") or ".", must_exist=True)
    recursive = bool(args.get("recursive"))
    if not os.path.isdir(top):
        raise RequestError("not_a_directory", f"{_rel(top)} is not a directory")
    entries: list[dict[str, Any]] = []
    truncated = False
    for current, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not (current == WORKSPACE and d in IGNORED))
        for name in [*dirs, *sorted(files)]:
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            full = os.path.join(current, name)
            info = os.lstat(full)
            entry = {
                "path": _rel(full),
                "type": _kind(info.st_mode),
                "size": info.st_size,
                "mode": stat.S_IMODE(info.st_mode),
            }
            if stat.S_ISLNK(info.st_mode):
                entry["link_target"] = os.readlink(full)
            entries.append(entry)
        if not recursive or truncated:
            break
    return {"path": _rel(top), "entries": entries, "truncated": truncated}


MAX_WALK_ENTRIES = 100_000


def op_list_dirs(args: dict[str, Any]) -> dict[str, Any]:
    """Entries (name, directory or not) of several directories: one level of a walk.

    The host walks the tree level by level and decides what to descend into,
    so it can stop at directories a project ignores (a virtualenv, a cache).
    """
    paths = args.get("paths")
    if not isinstance(paths, list) or len(paths) > MAX_WALK_ENTRIES:
        raise RequestError("bad_args", "paths must be a list of directories")
    found: dict[str, list[list[str]]] = {}
    total = 0
    for path in paths:
        full = scoped(path)
        if os.path.islink(full) or not os.path.isdir(full):
            continue
        entries = []
        with os.scandir(full) as listing:
            for entry in listing:
                if full == WORKSPACE and entry.name in IGNORED:
                    continue
                kind = "directory" if entry.is_dir(follow_symlinks=False) else "other"
                entries.append([entry.name, kind])
        total += len(entries)
        if total > MAX_WALK_ENTRIES:
            raise RequestError("too_many", f"more than {MAX_WALK_ENTRIES} entries at one level")
        found[_rel(full)] = sorted(entries)
    return {"dirs": found}


def op_file_read(args: dict[str, Any]) -> dict[str, Any]:
    path = scoped(args.get("path"), must_exist=True)
    limit = int(args.get("max_bytes") or 65536)
    if os.path.isdir(path):
        raise RequestError("is_a_directory", f"{_rel(path)} is a directory; use file list")
    if not os.path.isfile(path):
        raise RequestError("not_a_file", f"{_rel(path)} is not a regular file")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        data = handle.read(min(limit, MAX_CHUNK))
    return {
        "path": _rel(path),
        "size": size,
        "content": base64.b64encode(data).decode("ascii"),
        "truncated": size > len(data),
        "binary": _is_binary(data),
    }


def _is_binary(data: bytes) -> bool:
    if b"\0" in data[:8192]:
        return True
    try:
        data[:8192].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(data[:8192]) - 4  # a cut multi-byte char at the end is fine
    return False


# ------------------------------------------------------------------ write


def op_file_write(args: dict[str, Any]) -> dict[str, Any]:
    path = scoped(args.get("path"))
    data = _decode(args.get("content"))
    _write_file(path, data, args.get("mode"))
    return {"path": _rel(path), "bytes": len(data)}


def _write_file(path: str, data: bytes, mode: Any = None) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        raise RequestError("is_a_directory", f"{_rel(path)} is a directory; cannot write over it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    scoped(os.path.relpath(parent, WORKSPACE))  # the created parents must stay inside too
    keep_mode = os.stat(path).st_mode & 0o7777 if os.path.isfile(path) else 0o644
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".pyro-write-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, int(mode) if isinstance(mode, int) else keep_mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def op_files_apply(args: dict[str, Any]) -> dict[str, Any]:
    """Write and delete several files as one step: every path is checked first."""
    writes = args.get("writes") or []
    deletes = args.get("deletes") or []
    if not isinstance(writes, list) or not isinstance(deletes, list):
        raise RequestError("bad_args", "writes and deletes must be lists")
    planned = [(scoped(w.get("path")), _decode(w.get("content")), w.get("mode")) for w in writes]
    doomed = [scoped(p, must_exist=True) for p in deletes]
    for path, _, _ in planned:
        if os.path.isdir(path) and not os.path.islink(path):
            raise RequestError("is_a_directory", f"{_rel(path)} is a directory")
    for path in doomed:
        if os.path.isdir(path) and not os.path.islink(path):
            raise RequestError("is_a_directory", f"{_rel(path)} is a directory")
    for path, data, mode in planned:
        _write_file(path, data, mode)
    for path in doomed:
        os.unlink(path)
    return {"written": [_rel(p) for p, _, _ in planned], "deleted": [_rel(p) for p in doomed]}


def _decode(content: Any) -> bytes:
    if not isinstance(content, str):
        raise RequestError("bad_args", "content must be base64 text")
    try:
        return base64.b64decode(content, validate=True)
    except ValueError as exc:
        raise RequestError("bad_args", "content is not valid base64") from exc


# ------------------------------------------------------- chunked transfers


def op_pack(args: dict[str, Any]) -> dict[str, Any]:
    """Tar ``path`` (file or directory) into a staging file; the host reads it in chunks."""
    path = scoped(args.get("path") or ".", must_exist=True)
    os.makedirs(STAGING, exist_ok=True)
    fd, archive = tempfile.mkstemp(dir=STAGING, suffix=".tar")
    os.close(fd)
    kind = "directory" if os.path.isdir(path) and not os.path.islink(path) else "file"
    # Paths to leave out (relative to /workspace), made relative to what is packed.
    top = _rel(path)
    skip = {
        p if top == "." else p[len(top) + 1 :]
        for p in _path_set(args.get("exclude"))
        if top == "." or p.startswith(top + "/")
    }

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if member.name in skip else member

    with tarfile.open(archive, "w") as tar:
        if kind == "directory":
            for name in sorted(os.listdir(path)):
                if path == WORKSPACE and name in IGNORED:
                    continue
                tar.add(os.path.join(path, name), arcname=name, filter=keep)
        else:
            tar.add(path, arcname=os.path.basename(path))
    return {"staging": archive, "size": os.path.getsize(archive), "kind": kind, "path": _rel(path)}


def op_staging_create(args: dict[str, Any]) -> dict[str, Any]:
    os.makedirs(STAGING, exist_ok=True)
    fd, staged = tempfile.mkstemp(dir=STAGING, suffix=".tar")
    os.close(fd)
    return {"staging": staged}


def op_chunk_read(args: dict[str, Any]) -> dict[str, Any]:
    staged = _staging_path(args.get("staging"))
    offset = int(args.get("offset") or 0)
    length = min(int(args.get("length") or MAX_CHUNK), MAX_CHUNK)
    with open(staged, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    return {"data": base64.b64encode(data).decode("ascii")}


def op_chunk_write(args: dict[str, Any]) -> dict[str, Any]:
    staged = _staging_path(args.get("staging"))
    data = _decode(args.get("data"))
    with open(staged, "ab") as handle:
        handle.write(data)
        return {"size": handle.tell()}


def op_unpack(args: dict[str, Any]) -> dict[str, Any]:
    """Unpack a staged archive into ``dest`` under /workspace."""
    staged = _staging_path(args.get("staging"))
    dest = scoped(args.get("dest") or ".")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise RequestError("not_a_directory", f"{_rel(dest)} exists and is not a directory")
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(staged, "r") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Debian 12's Python 3.11.2 predates extraction filters
            tar.extractall(dest, members=members)
    return {"dest": _rel(dest), "files": sum(1 for m in members if m.isfile())}


def _check_member(member: tarfile.TarInfo) -> None:
    name = os.path.normpath(member.name)
    if name.startswith(("/", "..")) or member.isdev() or member.isfifo():
        raise RequestError("bad_archive", f"archive member {member.name!r} is not allowed")
    if member.issym() or member.islnk():
        base = os.path.dirname(name) if member.issym() else ""
        target = os.path.normpath(os.path.join(base, member.linkname))
        if member.linkname.startswith("/") or target.startswith(".."):
            raise RequestError("bad_archive", f"archive link {member.name!r} escapes")


def op_staging_remove(args: dict[str, Any]) -> dict[str, Any]:
    staged = _staging_path(args.get("staging"))
    if os.path.exists(staged):
        os.unlink(staged)
    return {}


def _staging_path(value: Any) -> str:
    if not isinstance(value, str) or os.path.dirname(value) != STAGING or ".." in value:
        raise RequestError("bad_args", "unknown staging file")
    return value


# ------------------------------------------------------------------- diff


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
    if not os.path.isdir(BASELINE):
        raise RequestError("no_baseline", "this workspace has no baseline mounted")
    exclude = _path_set(args.get("exclude"))
    git_binary = bool(args.get("git_binary"))
    with changes.TRACKER.diffing:
        directories, handles = changes.TRACKER.take()
        if args.get("walk"):  # asked for the full walk (a benchmark's slow side)
            directories = None
        try:
            view = _changed_view(directories) if directories is not None else None
            if view is None:
                directories = None
                view = _snapshot(BASELINE), _snapshot(WORKSPACE)
            old, new = view
            found = [
                change
                for path in sorted(set(old) | set(new))
                if (change := _compare(path, old.get(path), new.get(path))) is not None
            ]
        except BaseException:
            changes.TRACKER.give_back(handles, full=directories is None)
            raise
        changes.TRACKER.settle(
            [c["path"] for c in found],
            {c["path"] for c in found if c["type"] == "directory"},
        )
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


def _path_set(value: Any) -> set[str]:
    if value is None:
        return set()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("bad_args", "exclude must be a list of paths")
    return {os.path.normpath(v) for v in value}


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


def _snapshot(root: str, skip: tuple[str, ...] = IGNORED) -> dict[str, Info]:
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


def _changed_view(directories: set[str]) -> tuple[dict[str, Info], dict[str, Info]] | None:
    """Both sides' ``Info`` of every path a change could be at, given the
    directories the change record names; None when only a full walk will do.

    In each such directory every entry is looked at. A directory present on
    both sides with the same inode and ctime has the same entries (anything
    changed inside it has its own record); otherwise it is looked into as
    well, and a directory on one side only is taken whole.
    """
    old: dict[str, Info] = {}
    new: dict[str, Info] = {}
    pending, seen = sorted(directories), set()
    while pending:
        here = pending.pop()
        if here in seen:
            continue
        seen.add(here)
        names = _entries(BASELINE, here) | _entries(WORKSPACE, here)
        if here:
            names.add("")  # the directory itself: its mode
        elif IGNORED:
            names -= set(IGNORED)
        for name in names:
            path = os.path.join(here, name) if name else here
            before = _info(os.path.join(BASELINE, path))
            after = _info(os.path.join(WORKSPACE, path))
            for side, info in ((old, before), (new, after)):
                if info is not None:
                    side[path] = info
            if not name:
                continue
            before_dir = before is not None and stat.S_ISDIR(before[0])
            after_dir = after is not None and stat.S_ISDIR(after[0])
            if before_dir and after_dir:
                if before is not None and after is not None and before[3:6] != after[3:6]:
                    pending.append(path)  # entries added, removed or renamed in it
                continue
            if before_dir:
                old.update(_subtree(BASELINE, path))
            if after_dir:
                new.update(_subtree(WORKSPACE, path))
    for side in (old, new):
        if any(stat.S_ISREG(info[0]) and info[6] > 1 for info in side.values()):
            return None  # a hard link: a change may show under a name not looked at
    return old, new


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
            "type": _kind(after[0]),
            "binary": _file_is_binary(WORKSPACE, path, after),
        }
    if after is None:
        return {
            "path": path,
            "status": "deleted",
            "type": _kind(before[0]),
            "binary": _file_is_binary(BASELINE, path, before),
        }
    if before[0] != after[0]:
        return {
            "path": path,
            "status": "type_changed",
            "type": _kind(after[0]),
            "old_type": _kind(before[0]),
            "binary": False,
        }
    content_changed = False
    if before[3:6] == after[3:6]:
        pass  # the same inode, never written to since the baseline
    elif stat.S_ISREG(after[0]):
        content_changed = before[2] != after[2] or not _same_bytes(path)
    elif stat.S_ISLNK(after[0]):
        content_changed = os.readlink(os.path.join(BASELINE, path)) != os.readlink(
            os.path.join(WORKSPACE, path)
        )
    mode_changed = before[1] != after[1] and not stat.S_ISLNK(after[0])
    if not content_changed and not mode_changed:
        return None
    change: dict[str, Any] = {
        "path": path,
        "status": "modified",
        "type": _kind(after[0]),
        "binary": _file_is_binary(WORKSPACE, path, after),
    }
    if mode_changed:
        change["old_mode"], change["mode"] = before[1], after[1]
    if not content_changed:
        change["status"] = "mode_changed"
    return change


def _same_bytes(path: str) -> bool:
    with (
        open(os.path.join(BASELINE, path), "rb") as a,
        open(os.path.join(WORKSPACE, path), "rb") as b,
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
        return _is_binary(handle.read(8192))


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
    old_lines = _lines(BASELINE, path, before)
    new_lines = _lines(WORKSPACE, path, after)
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
    old, new = _content(BASELINE, path, before), _content(WORKSPACE, path, after)
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


OPERATIONS = {
    "file_list": op_file_list,
    "file_read": op_file_read,
    "file_write": op_file_write,
    "files_apply": op_files_apply,
    "pack": op_pack,
    "staging_create": op_staging_create,
    "chunk_read": op_chunk_read,
    "chunk_write": op_chunk_write,
    "unpack": op_unpack,
    "staging_remove": op_staging_remove,
    "diff": op_diff,
    "list_dirs": op_list_dirs,
}
