"""The raw drive a pulled image's layers reach the building guest on."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from pyro_mcp.environments import images


def _tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_layers_sit_at_aligned_offsets_with_zeros_between_and_after(tmp_path: Path) -> None:
    layers = []
    for number, digest in enumerate(("a" * 64, "b" * 64, "a" * 64)):
        layer = images.Layer(digest=f"sha256:{digest}", size=0, compression="gzip")
        if number < 2:  # the third is the first again: one copy serves both
            (tmp_path / digest).write_bytes(_tar(f"f{number}", bytes([65 + number]) * 5000))
        layers.append(layer)
    drive, places = images.blobs_raw(tmp_path, layers)
    data = drive.read_bytes()
    assert set(places) == {"a" * 64, "b" * 64}
    (first, first_size), (second, second_size) = places["a" * 64], places["b" * 64]
    assert first == 0 and second % images.RAW_ALIGN == 0
    assert second - (first + first_size) >= images.RAW_GAP
    assert not data[first + first_size : second].strip(b"\0")
    assert len(data) - (second + second_size) >= images.RAW_TAIL  # reads past the end: zeros
    for offset, size, member in ((first, first_size, "f0"), (second, second_size, "f1")):
        with tarfile.open(fileobj=io.BytesIO(data[offset : offset + size])) as tar:
            assert tar.getnames() == [member]
    assert not (tmp_path / ("b" * 64)).exists()  # appended, then gone
