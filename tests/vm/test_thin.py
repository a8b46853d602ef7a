"""Thin streams: what a QEMU mapping the base loads from one equals what it loads from the whole.

These streams are built by hand in QEMU 7.2's layout; `tests/workspaces/test_suspend.py`
resumes real guests from thinned streams.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from pyro_mcp.vm import thin
from pyro_mcp.vm.thin import CONTINUE, EOS, MEM_SIZE, PAGE, PAGE_SIZE, ZERO, ThinError

SECTION = struct.pack(">I", 2)
PAGES = 64
OTHER = b"/rom@etc/acpi/tables"
DEVICES = b"\x04\x00\x00\x00\x03\x05timer\x00\x00\x00\x00\x00\x00\x00\x02devices-state\x1f"


class Stream:
    """A migration stream in QEMU's layout, record by record."""

    def __init__(self, blocks: dict[bytes, int]) -> None:
        self.blocks = blocks
        self.out = bytearray(b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x07microvm")
        self.out += b"\x01" + SECTION + b"\x03ram" + struct.pack(">II", 0, 4)
        self.out += struct.pack(">Q", sum(blocks.values()) | MEM_SIZE)
        for name, length in blocks.items():
            self.out += bytes([len(name)]) + name + struct.pack(">Q", length)
        self.out += struct.pack(">Q", EOS) + b"\x7e" + SECTION
        self.last: bytes | None = None

    def section(self, kind: int) -> None:
        self.out += bytes([kind]) + SECTION

    def record(self, block: bytes, page: int, body: bytes) -> None:
        flags = ZERO if len(body) == 1 else PAGE
        if block == self.last:
            self.out += struct.pack(">Q", page * PAGE_SIZE | flags | CONTINUE)
        else:
            self.out += struct.pack(">Q", page * PAGE_SIZE | flags)
            self.out += bytes([len(block)]) + block
            self.last = block
        self.out += body

    def close_section(self) -> None:
        self.out += struct.pack(">Q", EOS) + b"\x7e" + SECTION

    def finish(self) -> bytes:
        return bytes(self.out) + DEVICES


def load(stream: bytes, base: bytes) -> tuple[dict[bytes, bytearray], bytes]:
    """What QEMU's loader does with ``stream`` into a private mapping of ``base``:
    each block's memory and the device state left after the RAM sections."""
    start = stream.index(b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04")
    pos = start + 12
    total = struct.unpack_from(">Q", stream, pos)[0] & ~(PAGE_SIZE - 1)
    pos += 8
    memory: dict[bytes, bytearray] = {}
    while sum(len(m) for m in memory.values()) < total:
        name = stream[pos + 1 : pos + 1 + stream[pos]]
        pos += 1 + len(name)
        length = struct.unpack_from(">Q", stream, pos)[0]
        pos += 8
        memory[name] = bytearray(base) if name == b"ram" else bytearray(length)
    pos += 8 + 5
    block = b""
    while stream[pos] in (2, 3):
        kind = stream[pos]
        pos += 5
        while True:
            word = struct.unpack_from(">Q", stream, pos)[0]
            pos += 8
            flags, address = word & (PAGE_SIZE - 1), word & ~(PAGE_SIZE - 1)
            if flags & EOS:
                break
            if not flags & CONTINUE:
                block = stream[pos + 1 : pos + 1 + stream[pos]]
                pos += 1 + len(block)
            if flags & ZERO:
                memory[block][address : address + PAGE_SIZE] = bytes([stream[pos]]) * PAGE_SIZE
                pos += 1
            else:
                memory[block][address : address + PAGE_SIZE] = stream[pos : pos + PAGE_SIZE]
                pos += PAGE_SIZE
        pos += 5
        if kind == 3:
            break
    return memory, stream[pos:]


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE_SIZE


def make_base(tmp_path: Path, rng: random.Random) -> tuple[Path, bytes]:
    """A base file: data in its first half (some of it zero), a hole after."""
    data = bytearray(PAGES * PAGE_SIZE)
    for number in range(PAGES // 2):
        if number % 5:
            data[number * PAGE_SIZE : (number + 1) * PAGE_SIZE] = rng.randbytes(PAGE_SIZE)
    path = tmp_path / "ram.img"
    with path.open("wb") as handle:
        handle.write(data[: PAGES // 2 * PAGE_SIZE])
        handle.truncate(PAGES * PAGE_SIZE)  # the second half is a hole
    return path, bytes(data)


def thin_and_compare(tmp_path: Path, stream: bytes, base_path: Path, base: bytes) -> thin.Thinned:
    whole = tmp_path / "whole.state"
    whole.write_bytes(stream)
    result = thin.thin(whole, base_path, tmp_path / "thin.state")
    thinned = (tmp_path / "thin.state").read_bytes()
    assert load(thinned, base) == load(stream, base)
    assert result.bytes_after == len(thinned) <= len(stream)
    return result


def test_a_guest_that_changed_a_few_pages_keeps_only_those(tmp_path: Path) -> None:
    rng = random.Random(1)
    base_path, base = make_base(tmp_path, rng)
    stream = Stream({b"ram": PAGES * PAGE_SIZE, OTHER: 2 * PAGE_SIZE})
    stream.section(2)
    changed = {3: rng.randbytes(PAGE_SIZE), 40: rng.randbytes(PAGE_SIZE)}
    for number in range(PAGES):
        current = base[number * PAGE_SIZE : (number + 1) * PAGE_SIZE]
        current = changed.get(number, current)
        if number == 7:
            current = page(0)  # the guest zeroed a page the base has data in
        if number == 9:
            current = page(0x41)  # a filled page (a "zero" record of another byte)
        body = current if current != page(current[0]) else bytes([current[0]])
        stream.record(b"ram", number, body)
        if number == 20:
            stream.record(OTHER, 1, rng.randbytes(PAGE_SIZE))
    stream.close_section()
    stream.section(3)
    stream.close_section()
    result = thin_and_compare(tmp_path, stream.finish(), base_path, base)
    # Pages 3, 40, 7 and 9 of the base block, and the other block's record.
    assert result.pages_kept == 5
    assert result.pages_dropped == PAGES - 4


def test_the_last_record_of_a_page_wins_as_in_a_live_save(tmp_path: Path) -> None:
    rng = random.Random(2)
    base_path, base = make_base(tmp_path, rng)
    stream = Stream({b"ram": PAGES * PAGE_SIZE})
    stream.section(2)
    for number in range(PAGES):
        stream.record(b"ram", number, b"\x00")  # a first pass: all zero
    stream.close_section()
    stream.section(2)
    # Dirtied again: page 2 becomes new data and then the base's own page
    # again; page 50 (a hole in the base) gets data; page 1 data then zero.
    stream.record(b"ram", 2, rng.randbytes(PAGE_SIZE))
    stream.record(b"ram", 50, rng.randbytes(PAGE_SIZE))
    stream.record(b"ram", 1, rng.randbytes(PAGE_SIZE))
    stream.close_section()
    stream.section(3)
    stream.record(b"ram", 2, base[2 * PAGE_SIZE : 3 * PAGE_SIZE])
    stream.record(b"ram", 1, b"\x00")
    stream.close_section()
    thin_and_compare(tmp_path, stream.finish(), base_path, base)


def test_runs_of_zero_records_out_of_order_are_read_one_by_one(tmp_path: Path) -> None:
    rng = random.Random(3)
    base_path, base = make_base(tmp_path, rng)
    stream = Stream({b"ram": PAGES * PAGE_SIZE})
    stream.section(2)
    order = list(range(PAGES))
    rng.shuffle(order)
    stream.record(b"ram", 60, rng.randbytes(PAGE_SIZE))
    for number in order:
        stream.record(b"ram", number, b"\x00")
    stream.close_section()
    stream.section(3)
    stream.close_section()
    thin_and_compare(tmp_path, stream.finish(), base_path, base)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[: len(s) // 2], "ends"),
        (lambda s: s.replace(b"\x03ram", b"\x03mar", 1), "no RAM section"),
        (
            lambda s: s.replace(
                struct.pack(">Q", 5 * PAGE_SIZE | PAGE | CONTINUE),
                struct.pack(">Q", 5 * PAGE_SIZE | 0x100 | CONTINUE),
            ),
            "flags",
        ),
        (
            lambda s: s.replace(
                struct.pack(">Q", 5 * PAGE_SIZE | PAGE | CONTINUE),
                struct.pack(">Q", PAGES * PAGE_SIZE | PAGE | CONTINUE),
            ),
            "outside",
        ),
        (lambda s: s.replace(b"\x7e" + SECTION, b"\x7f" + SECTION), "footer"),
    ],
)
def test_a_stream_it_does_not_understand_is_refused(
    tmp_path: Path, damage: object, message: str
) -> None:
    rng = random.Random(4)
    base_path, _ = make_base(tmp_path, rng)
    stream = Stream({b"ram": PAGES * PAGE_SIZE})
    stream.section(3)
    for number in range(PAGES):
        stream.record(b"ram", number, rng.randbytes(PAGE_SIZE))
    stream.close_section()
    whole = tmp_path / "whole.state"
    whole.write_bytes(damage(stream.finish()))  # type: ignore[operator]
    with pytest.raises(ThinError, match=message):
        thin.thin(whole, base_path, tmp_path / "thin.state")


def test_a_base_of_another_size_is_refused(tmp_path: Path) -> None:
    stream = Stream({b"ram": PAGES * PAGE_SIZE})
    stream.section(3)
    stream.close_section()
    whole = tmp_path / "whole.state"
    whole.write_bytes(stream.finish())
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(PAGE_SIZE))
    with pytest.raises(ThinError, match="size"):
        thin.thin(whole, other, tmp_path / "thin.state")
