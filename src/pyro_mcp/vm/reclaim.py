"""Give back the snapshot pages a running warm guest's QEMU only read.

A warm guest maps its snapshot's RAM file privately. Saving its memory while it
keeps running (a fork) reads every page of guest RAM, and each page the guest
never wrote is faulted in from the file: about 1 GiB of clean page cache that
only this QEMU maps, which stays mapped (and counted in its PSS) as long as it
runs. Those pages hold nothing the guest needs in memory: the file has them.

``drop_read_only_pages`` finds, through ``/proc/PID/pagemap``, the pages of the
RAM file mapping that are present and still the file's own (not copied on
write), and asks the kernel to page them out of that process
(``process_madvise(MADV_PAGEOUT)``). The kernel leaves alone pages other
processes map too (other warm guests sharing the snapshot), and anonymous pages
are never passed, so a host with swap does not push the guest's own memory out.
A later read by the guest faults the page in from the file again.
"""

from __future__ import annotations

import array
import ctypes
import logging
import os
import re
from pathlib import Path

from pyro_mcp import host_tools

log = logging.getLogger("pyro.vm.reclaim")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MADV_PAGEOUT = 21
SYS_PROCESS_MADVISE = 440  # x86_64
IOV_MAX = 1024
_PRESENT = 1 << 63
_FILE_PAGE = 1 << 61  # a file page or shared anonymous: not copied on write


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def memory_file(argv: list[str]) -> str | None:
    """The RAM file a QEMU command line maps privately (a warm guest), if any."""
    for word in argv:
        if word.startswith("memory-backend-file,") and "share=off" in word.split(","):
            match = re.search(r"(?:^|,)mem-path=([^,]+)", word)
            if match:
                return match.group(1)
    return None


def _mapping(pid: int, path: str) -> tuple[int, int] | None:
    """Start and end of ``pid``'s mapping of ``path``."""
    real = os.path.realpath(path)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and os.path.realpath(fields[5]) == real:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            return start, end
    return None


def _file_page_runs(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """Runs (address, length) of present pages in [start, end) that are the file's own."""
    runs: list[tuple[int, int]] = []
    entries = array.array("Q")
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE_SIZE * 8)
        entries.frombytes(pagemap.read((end - start) // PAGE_SIZE * 8))
    run_start = None
    wanted = _PRESENT | _FILE_PAGE
    for index, entry in enumerate(entries):
        if entry & wanted == wanted:
            if run_start is None:
                run_start = index
        elif run_start is not None:
            runs.append((start + run_start * PAGE_SIZE, (index - run_start) * PAGE_SIZE))
            run_start = None
    if run_start is not None:
        runs.append((start + run_start * PAGE_SIZE, (len(entries) - run_start) * PAGE_SIZE))
    return runs


def drop_read_only_pages(pid: int, path: str) -> int:
    """Page the RAM file's unwritten pages out of ``pid``; the bytes asked for.

    Best effort: a kernel without ``process_madvise`` (before 5.10) or a
    process that is gone leaves everything as it was (logged, 0 returned).
    """
    try:
        span = _mapping(pid, path)
        if span is None:
            return 0
        runs = _file_page_runs(pid, *span)
        if not runs:
            return 0
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        log.info("cannot read the memory map of QEMU %s: %s", pid, exc)
        return 0
    syscall = host_tools.libc().syscall
    asked = 0
    try:
        for first in range(0, len(runs), IOV_MAX):
            batch = runs[first : first + IOV_MAX]
            vectors = (_IoVec * len(batch))(*(_IoVec(base, length) for base, length in batch))
            done = syscall(
                ctypes.c_long(SYS_PROCESS_MADVISE),
                ctypes.c_int(pidfd),
                vectors,
                ctypes.c_size_t(len(batch)),
                ctypes.c_int(MADV_PAGEOUT),
                ctypes.c_uint(0),
            )
            if done < 0:
                error = ctypes.get_errno()
                log.info("process_madvise on QEMU %s failed: %s", pid, os.strerror(error))
                break
            asked += sum(length for _, length in batch)
    finally:
        os.close(pidfd)
    return asked
