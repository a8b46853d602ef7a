"""Thin a saved memory stream against the RAM file the guest mapped copy-on-write.

A warm-started guest maps its snapshot's RAM file privately: every page it
never wrote is still the file's page. QEMU's migration stream carries all of
guest RAM anyway: each page whole, or as a one-byte "zero page" record. Most of
those pages equal the file's (an idle guest differs from its snapshot in a few
MiB of 1 GiB), and on resume every record costs a page fault: the zero ones
into memory QEMU must first read to see it is already zero.

``thin`` rewrites a completed stream so that it carries only the pages of the
RAM block that differ from ``base``, plus everything else as it was. A QEMU
that maps ``base`` privately (as the warm VM did) and loads the thin stream
ends with exactly the memory the full stream would have given it: every page
left out equals the base's. The last record of a page wins, as in QEMU's own
loading, so the live stream of a fork (pages sent again as the guest dirtied
them) thins correctly.

Stream layout (QEMU 7.2, ``migration/savevm.c`` and ``migration/ram.c``)::

    "QEVM" be32 version, 0x07 configuration,
    0x01 START section "ram": be64 size|MEM_SIZE, each block (len, name, be64
         length), be64 EOS, footer 0x7e be32 section id
    0x02 PART / 0x03 END sections of "ram": page records, be64 EOS, footer
    0x04 FULL sections of devices ... (left as they are)

A page record is ``be64 address|flags``, the block's name unless the flags say
CONTINUE (same block as the record before), then one byte (ZERO) or a page.
Anything unexpected raises ``ThinError``; the caller then keeps the full
stream, which resumes into anonymous memory as before.
"""

from __future__ import annotations

import array
import bisect
import functools
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = 4096
# Section types and the footer marker.
START, PART, END, FOOTER = 0x01, 0x02, 0x03, 0x7E
# Page record flags (the low bits of the address word).
ZERO, MEM_SIZE, PAGE, EOS, CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_MASK = PAGE_SIZE - 1
HANDLED = ZERO | PAGE | EOS | CONTINUE
# The block the base file backs (memory-backend id "ram").
BASE_BLOCK = b"ram"
_ZERO_PAGE = bytes(PAGE_SIZE)
_U64 = struct.Struct(">Q")


class ThinError(ValueError):
    """The stream is not one this module understands; keep it whole."""


@dataclass(frozen=True)
class Thinned:
    bytes_before: int
    bytes_after: int
    pages_kept: int
    pages_dropped: int


def thin(stream: Path, base: Path, out: Path) -> Thinned:
    """Write to ``out`` the stream at ``stream`` less the pages equal to ``base``'s."""
    with stream.open("rb") as handle, base.open("rb") as base_handle:
        size = os.fstat(handle.fileno()).st_size
        base_size = os.fstat(base_handle.fileno()).st_size
        if size == 0 or base_size == 0:
            raise ThinError("the stream or the base file is empty")
        with (
            mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as data,
            mmap.mmap(base_handle.fileno(), 0, prot=mmap.PROT_READ) as base_data,
        ):
            parsed = _parse(data, base_size)
            extents = data_extents(base_handle.fileno(), base_size)
            kept, dropped = _write(data, parsed, base_data, extents, out)
    return Thinned(size, out.stat().st_size, kept, dropped)


@dataclass
class _Parsed:
    section: bytes  # the RAM section's be32 id
    head_end: int  # where the START section (block list) ends
    tail: int  # where the RAM section's END (its footer included) ends
    names: list[bytes]
    # The base block, a page each: NONE, ZERO_PAGE, FILLED_PAGE (a "zero" record
    # with another byte, in ``where``) or WHOLE_PAGE (its offset in the stream in
    # ``where``). The last record wins.
    state: bytearray
    where: list[int]
    # Other blocks' records, last one winning: (block, address) -> (flags, body offset).
    others: dict[tuple[int, int], tuple[int, int]]


NONE, ZERO_PAGE, WHOLE_PAGE, FILLED_PAGE = 0, 1, 2, 3
# A record for the next page of the base block, zero, continuing the block:
# runs of these are most of an idle guest's stream and are read in bulk.
_ZERO_RUN = re.compile(
    rb"(?:.{6}[\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0]\x22\x00)+", re.S
)


@functools.lru_cache(maxsize=4)
def _consecutive_zero_records(pages: int) -> bytes:
    """Zero records for pages 0 .. pages-1 in order: a run in the stream is a slice of it."""
    words = array.array("Q", range(ZERO | CONTINUE, pages * PAGE_SIZE, PAGE_SIZE))
    if sys.byteorder == "little":
        words.byteswap()
    packed = words.tobytes()
    records = bytearray(9 * pages)  # each record's last byte stays 0
    for column in range(8):
        records[column::9] = packed[column::8]
    return bytes(records)


def _parse(data: mmap.mmap, base_size: int) -> _Parsed:
    size = len(data)
    # The configuration section (machine name and optional subsections) comes
    # before the RAM section's START; find it rather than parse every kind.
    at = data.find(b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04", 0, 4096)
    if data[:4] != b"QEVM" or at < 5 or data[at - 5] != START:
        raise ThinError("no RAM section where QEMU 7.2 writes it")
    section = data[at - 4 : at]
    pos = at + 12
    word = _U64.unpack_from(data, pos)[0]
    pos += 8
    if word & FLAG_MASK != MEM_SIZE:
        raise ThinError("the RAM section does not start with its size")
    total = word & ~FLAG_MASK
    blocks: dict[bytes, int] = {}
    names: list[bytes] = []
    seen = 0
    while seen < total and pos < size:
        length_at = pos + 1 + data[pos]
        name = data[pos + 1 : length_at]
        length = _U64.unpack_from(data, length_at)[0]
        pos = length_at + 8
        if name in blocks or length == 0 or length % PAGE_SIZE:
            raise ThinError(f"RAM block {name!r} is listed twice or is not whole pages")
        blocks[name] = length
        names.append(name)
        seen += length
    if seen != total or blocks.get(BASE_BLOCK) != base_size:
        raise ThinError("the RAM blocks do not add up, or the base is not the RAM block's size")
    pos = _section_end(data, pos, section)
    head_end = pos
    index = {name: number for number, name in enumerate(names)}
    base_block = index[BASE_BLOCK]
    pages = base_size // PAGE_SIZE
    state = bytearray(pages)
    where = [0] * pages
    others: dict[tuple[int, int], tuple[int, int]] = {}
    runs = _consecutive_zero_records(pages)
    block, limit = -1, 0
    unpack = _U64.unpack_from
    try:
        while True:
            kind = data[pos]
            if kind not in (PART, END) or data[pos + 1 : pos + 5] != section:
                raise ThinError(f"unexpected section type {kind:#x} among the RAM sections")
            pos += 5
            while True:
                word = unpack(data, pos)[0]
                flags = word & FLAG_MASK
                address = word & ~FLAG_MASK
                if flags == ZERO | CONTINUE and block == base_block and data[pos + 8] == 0:
                    run = _ZERO_RUN.match(data, pos)
                    assert run is not None
                    end = run.end()
                    first = address // PAGE_SIZE
                    count = (end - pos) // 9
                    if (
                        first + count <= pages
                        and data[pos:end] == runs[first * 9 : (first + count) * 9]
                    ):
                        state[first : first + count] = bytes([ZERO_PAGE]) * count
                        pos = end
                        continue
                pos += 8
                if flags & ~HANDLED:
                    raise ThinError(f"page record flags {flags:#x} (compression?) are not handled")
                if flags & EOS:
                    break
                if not flags & CONTINUE:
                    end = pos + 1 + data[pos]
                    number = index.get(data[pos + 1 : end], -1)
                    if number < 0:
                        raise ThinError("a page record names an unknown RAM block")
                    block, limit, pos = number, blocks[names[number]], end
                elif block < 0:
                    raise ThinError("the first page record continues no block")
                if address >= limit:
                    raise ThinError("a page record lies outside its RAM block")
                if flags & ZERO:
                    body, pos = data[pos], pos + 1
                elif flags & PAGE:
                    body, pos = pos, pos + PAGE_SIZE
                else:
                    raise ThinError("a page record is neither a page nor a zero page")
                if block == base_block:
                    page = address // PAGE_SIZE
                    if flags & PAGE:
                        state[page] = WHOLE_PAGE
                    else:
                        state[page] = FILLED_PAGE if body else ZERO_PAGE
                    where[page] = body
                else:
                    others[(block, address)] = (flags & (ZERO | PAGE), body)
                if pos > size:
                    raise ThinError("the stream ends inside a page record")
            pos = _footer(data, pos, section)
            if kind == END:
                return _Parsed(section, head_end, pos, names, state, where, others)
    except (IndexError, struct.error) as exc:
        raise ThinError("the stream ends inside its RAM sections") from exc


def _section_end(data: mmap.mmap, pos: int, section: bytes) -> int:
    if _U64.unpack_from(data, pos)[0] != EOS:
        raise ThinError("the RAM block list is not closed")
    return _footer(data, pos + 8, section)


def _footer(data: mmap.mmap, pos: int, section: bytes) -> int:
    if data[pos] != FOOTER or data[pos + 1 : pos + 5] != section:
        raise ThinError("a RAM section has no footer")
    return pos + 5


_DIFFERENT = re.compile(rb"[\x02\x03]")
_ZEROED = re.compile(rb"\x01")


def _write(
    data: mmap.mmap,
    parsed: _Parsed,
    base: mmap.mmap,
    extents: list[tuple[int, int]],
    out: Path,
) -> tuple[int, int]:
    """The stream with one END section: the records that differ from the base."""
    state, where = parsed.state, parsed.where
    keep: list[int] = []
    # A whole page is sent only when it is not all zero: in a hole of the base
    # it differs; elsewhere compare it.
    starts = [start // PAGE_SIZE for start, _ in extents]
    for found in _DIFFERENT.finditer(state):
        page = found.start()
        if state[page] == WHOLE_PAGE:
            at = bisect.bisect_right(starts, page) - 1
            offset = page * PAGE_SIZE
            body = where[page]
            if (
                at >= 0
                and offset < extents[at][1]
                and data[body : body + PAGE_SIZE] == base[offset : offset + PAGE_SIZE]
            ):
                continue
        keep.append(page)
    # A zero page differs only where the base has data that is not zero.
    for start, end in extents:
        for found in _ZEROED.finditer(state, start // PAGE_SIZE, -(-end // PAGE_SIZE)):
            offset = found.start() * PAGE_SIZE
            if base[offset : offset + PAGE_SIZE] != _ZERO_PAGE:
                keep.append(found.start())
    keep.sort()
    base_block = parsed.names.index(BASE_BLOCK)
    chunks: list[bytes] = [data[: parsed.head_end], bytes([END]) + parsed.section]
    records = [
        (base_block, page * PAGE_SIZE, state[page], where[page] if state[page] != ZERO_PAGE else 0)
        for page in keep
    ]
    records += [
        (block, address, ZERO_PAGE if flags == ZERO else WHOLE_PAGE, body)
        for (block, address), (flags, body) in parsed.others.items()
    ]
    previous = -1
    for block, address, kind, body in records:
        flags = PAGE if kind == WHOLE_PAGE else ZERO
        if block == previous:
            chunks.append(_U64.pack(address | flags | CONTINUE))
        else:
            name = parsed.names[block]
            chunks.append(_U64.pack(address | flags) + bytes([len(name)]) + name)
            previous = block
        chunks.append(bytes([body]) if flags == ZERO else data[body : body + PAGE_SIZE])
    chunks.append(_U64.pack(EOS) + bytes([FOOTER]) + parsed.section)
    chunks.append(data[parsed.tail :])
    with out.open("wb") as handle:
        handle.writelines(chunks)
        handle.flush()
        os.fsync(handle.fileno())
    sent = len(state) - state.count(NONE)
    return len(records), sent - len(keep)


def data_extents(fd: int, length: int) -> list[tuple[int, int]]:
    """Where the base file has data (the rest are holes: zero, not worth reading)."""
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < length:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past offset
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end))
        offset = end
    return extents
