"""Which paths of /workspace changed since the baseline (standard library only).

A diff against the baseline used to walk both trees and compare every file,
so each call cost seconds on a large project however little the agent had
touched. Here the guest watches the workspace filesystem with fanotify
(``FAN_MARK_FILESYSTEM``, reporting each event's directory and entry name)
from the moment it is mounted, and keeps the set of entries something
happened to. A diff then looks only at those (and into directories that were
added, deleted or replaced), not at the rest of the tree.

The record is *trusted* only when it covers every change since the baseline:
the host says the disk was just made from the baseline (``fresh``), or a
full walk has since established what differs. Anything that may have escaped
it (a queue overflow, a remount, an agent that started after the mount, a
directory that cannot be named) makes it untrusted, and the next diff walks
everything and trusts it again from there.

Writes through a shared memory mapping after the file was closed are not
reported by the kernel; such a file shows up once its directory changes or
after the next full walk.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
from typing import Any

WORKSPACE = "/workspace"

# linux/fanotify.h
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
HANDLE_BYTES = struct.Struct("I")
WATCHED = (
    FAN_MODIFY
    | FAN_ATTRIB
    | FAN_CLOSE_WRITE
    | FAN_MOVED_FROM
    | FAN_MOVED_TO
    | FAN_CREATE
    | FAN_DELETE
    | FAN_ONDIR
)
AT_FDCWD = -100
O_PATH = 0o10000000
EVENT_HEADER = struct.Struct("IBBHQii")
INFO_HEADER = struct.Struct("BBH")
FSID_BYTES = 8
GONE = object()
READ_BYTES = 64 * 1024
# The reader drains the queue at most this often: in between, the kernel folds
# events on the same directory into one, and the guest's one vCPU is not spent
# waking Python for every write (a diff drains what is left first).
DRAIN_EVERY_SECONDS = 1.0


class Tracker:
    """The directories of /workspace that changed; one per agent process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._mount_fd = -1
        self._wake = -1  # closing it ends the reading thread
        self._handles: set[bytes] = set()  # (directory handle, NUL, name) from events
        self._known: set[str] = set()  # the paths the last diff found changed
        self._trusted = False
        self.diffing = threading.Lock()  # one diff at a time: each settles the record
        self._reading = threading.Lock()  # one reader of the queue at a time

    def start(self, *, fresh: bool) -> None:
        """Watch /workspace (just mounted); ``fresh``: it equals the baseline now."""
        self.stop()
        libc = _libc()
        flags = FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DIR_FID | FAN_REPORT_NAME
        fd = libc.fanotify_init(flags, os.O_RDONLY)
        if fd < 0:
            return  # no fanotify in this kernel: every diff walks everything
        path = WORKSPACE.encode()
        if libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, WATCHED, AT_FDCWD, path):
            os.close(fd)
            return
        wake_read, wake_write = os.pipe()
        with self._lock:
            self._fd, self._wake = fd, wake_write
            self._mount_fd = os.open(WORKSPACE, os.O_RDONLY | os.O_DIRECTORY)
            self._handles, self._known, self._trusted = set(), set(), fresh
        threading.Thread(target=self._read_events, args=(fd, wake_read), daemon=True).start()

    def stop(self) -> None:
        """Forget everything (before /workspace is unmounted)."""
        with self._lock:
            wake, mount_fd = self._wake, self._mount_fd
            self._fd = self._mount_fd = self._wake = -1
            self._handles, self._known, self._trusted = set(), set(), False
        for descriptor in (wake, mount_fd):
            if descriptor >= 0:
                with contextlib.suppress(OSError):
                    os.close(descriptor)

    def take(self) -> tuple[set[str] | None, set[bytes]]:
        """The paths to look at (relative to /workspace; ``""`` is its root),
        or None when only a full walk will do; and the events taken,
        which ``give_back`` returns if the diff fails. Starts watching if
        nothing does yet (after an agent restart, or a cold boot of a changed
        disk): the full walk that follows makes the record whole.
        """
        if self._fd < 0 and os.path.ismount(WORKSPACE):
            self.start(fresh=False)
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._drain(self._fd)
        with self._lock:
            handles, self._handles = self._handles, set()
            if not self._trusted:
                # Trusted again once this full walk settles, unless events are lost meanwhile.
                self._trusted = self._fd >= 0
                return None, handles
            directories = set(self._known)
        for event in handles:
            handle, _, raw_name = event.rpartition(b"\0")
            directory = self._name(handle)
            if directory is None:  # the full walk this diff makes instead covers it
                return None, set()
            if isinstance(directory, str):
                name = os.fsdecode(raw_name)
                if name in ("", "."):
                    directories.add(directory)
                elif "/" not in name:
                    directories.add(os.path.join(directory, name) if directory else name)
        return directories, handles

    def settle(self, changed: list[str]) -> None:
        """After a diff: ``changed`` is every path that differs from the baseline
        (none left out; one added or deleted whole may stand for what is below it)."""
        with self._lock:
            if self._fd >= 0:
                self._known = set(changed)

    def give_back(self, handles: set[bytes], *, full: bool) -> None:
        """A diff failed (``full``: a full walk, which was to make the record whole)."""
        with self._lock:
            self._handles |= handles
            if full:
                self._trusted = False

    def _read_events(self, fd: int, wake: int) -> None:
        try:
            while True:
                ready, _, _ = select.select([fd, wake], [], [])
                if wake in ready:
                    return  # stop()
                self._drain(fd)
                ready, _, _ = select.select([wake], [], [], DRAIN_EVERY_SECONDS)
                if ready:
                    return
        except OSError:
            with self._lock:
                if fd == self._fd:  # the next diff walks everything and watches anew
                    self._fd, self._trusted = -1, False
        finally:
            os.close(fd)
            os.close(wake)

    def _drain(self, fd: int) -> None:
        """Read every queued event now (the reader thread, or a diff about to look)."""
        with self._reading:
            while True:
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    return
                if not data:
                    return
                handles, overflow = _parse(data)
                with self._lock:
                    self._handles |= handles
                    if overflow:
                        self._trusted = False

    def _name(self, handle: bytes) -> str | object | None:
        """The directory's path relative to /workspace (``""`` for its root);
        GONE for one deleted since (its parent's own event covers it); None if
        it cannot be named (then nothing is trusted)."""
        buffer = ctypes.create_string_buffer(handle[FSID_BYTES:])
        fd = _libc().open_by_handle_at(self._mount_fd, buffer, O_PATH)
        if fd < 0:
            return GONE if ctypes.get_errno() in (errno.ESTALE, errno.ENOENT) else None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if target.endswith(" (deleted)"):
            return GONE
        if target == WORKSPACE:
            return ""
        if not target.startswith(WORKSPACE + "/"):
            return None
        return target[len(WORKSPACE) + 1 :]


def _parse(data: bytes) -> tuple[set[bytes], bool]:
    """What a read's events name: each a directory handle (fsid + struct
    file_handle), a NUL and the entry's name; and whether events were lost."""
    found: set[bytes] = set()
    overflow, offset = False, 0
    while offset + EVENT_HEADER.size <= len(data):
        length, _, _, meta_length, mask, _, _ = EVENT_HEADER.unpack_from(data, offset)
        if length < EVENT_HEADER.size or offset + length > len(data):
            return found, True  # a malformed read: trust nothing
        if mask & FAN_Q_OVERFLOW:
            overflow = True
        info = offset + meta_length
        while info + INFO_HEADER.size <= offset + length:
            kind, _, info_length = INFO_HEADER.unpack_from(data, info)
            if info_length <= INFO_HEADER.size or info + info_length > offset + length:
                return found, True
            if kind == FAN_EVENT_INFO_TYPE_DFID_NAME:
                start = info + INFO_HEADER.size
                (handle_bytes,) = HANDLE_BYTES.unpack_from(data, start + FSID_BYTES)
                handle_end = start + FSID_BYTES + 8 + handle_bytes
                name = bytes(data[handle_end : info + info_length]).split(b"\0", 1)[0]
                found.add(bytes(data[start:handle_end]) + b"\0" + name)
            info += info_length
        offset += length
    return found, overflow


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        libc.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        _LIBC = libc
    return _LIBC


TRACKER = Tracker()
