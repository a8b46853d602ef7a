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


def test_prune_keeps_the_building_guest_a_build_can_restore_and_drops_the_rest(
    tmp_path: Path,
) -> None:
    import json
    import os

    from pyro_mcp.environments import builder
    from pyro_mcp.version import __version__
    from pyro_mcp.vm import warm_builder

    def shape(name: str, **key: object) -> Path:
        folder = tmp_path / "warm-builder" / "builder" / name
        snapshot = folder / "snapshots" / "s1"
        snapshot.mkdir(parents=True)
        (snapshot / "devices.snap").write_bytes(b"x" * 5000)
        (snapshot / "manifest.json").write_text(json.dumps({"key": key}))
        (folder / "current").symlink_to("snapshots/s1")
        (folder / "snapshots" / "s0-older").mkdir()
        return folder

    good = {
        "guest_files": f"initrd-{builder.guest_files_hash()}.img",
        "build_id": f"abc/6.1/layout-{warm_builder.LAYOUT}",
        "vcpu_count": min(2, os.cpu_count() or 1),
        "pyro_version": __version__,
    }
    usable = shape("usable", **good)
    stale = shape("stale", **{**good, "guest_files": "initrd-old.img"})
    removed = warm_builder.prune(tmp_path)["removed"]
    assert sorted(removed) == sorted(
        [
            str(usable / "snapshots" / "s0-older"),
            str(stale / "snapshots" / "s0-older"),
            str(stale / "snapshots" / "s1"),
        ]
    )
    assert (usable / "current").resolve().is_dir() and not (stale / "current").exists()
    warm_builder.prune(tmp_path, everything=True)
    assert not list((tmp_path / "warm-builder").rglob("manifest.json"))


def test_prune_leaves_a_building_guest_store_linked_from_another_cache(tmp_path: Path) -> None:
    from pyro_mcp.vm import warm_builder

    shared = tmp_path / "shared" / "warm-builder" / "builder" / "2cpu-1024m" / "snapshots" / "s1"
    shared.mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "warm-builder").symlink_to(tmp_path / "shared" / "warm-builder")
    assert warm_builder.prune(mine, everything=True)["removed"] == []
    assert shared.is_dir()
