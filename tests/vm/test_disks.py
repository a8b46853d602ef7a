"""Drive images on the host: layers a fork shares, new tops, and their names at rest.

Real qemu-img on real files; the running-VM side is in tests/workspaces/test_fork.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyro_mcp.errors import VMError
from pyro_mcp.vm import disks


@pytest.fixture
def drive(tmp_path: Path) -> Path:
    """A workspace folder's drive: workspace.qcow2 on a raw baseline.ext4."""
    subprocess.run(["truncate", "-s", "16M", str(tmp_path / "baseline.ext4")], check=True)
    disks.create_overlay(tmp_path / "baseline.ext4", tmp_path / "workspace.qcow2")
    return tmp_path / "workspace.qcow2"


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_drive_names_its_baseline_relative_so_its_chain_resolves_in_any_folder(
    drive: Path,
) -> None:
    assert disks.backing_name(drive) == "baseline.ext4"
    assert disks.live_top(drive) == drive


def test_each_split_makes_the_live_top_a_layer_and_settle_renames_the_newest_top(
    drive: Path,
) -> None:
    before = drive.stat().st_ino
    first = disks.split(drive)
    assert first.live == drive and first.layer.stat().st_ino == before
    assert disks.backing_name(first.top) == "workspace.layer-1.qcow2"
    layer = disks.freeze(first)
    assert layer.name == "workspace.layer-1.qcow2" and layer.lower == ()
    assert not first.layer.stat().st_mode & 0o222
    # Forked again while it runs: the newer top is the live one.
    assert disks.live_top(drive) == first.top
    second = disks.split(drive)
    assert second.live == first.top and second.layer.name == "workspace.layer-2.qcow2"
    assert disks.freeze(second).lower == (first.layer,)
    disks.settle(drive)
    assert names(drive.parent) == [
        "baseline.ext4",
        "workspace.layer-1.qcow2",
        "workspace.layer-2.qcow2",
        "workspace.qcow2",
    ]
    chain = [Path(i["filename"]).name for i in disks.backing_chain(drive)]
    assert chain == [
        "workspace.qcow2",
        "workspace.layer-2.qcow2",
        "workspace.layer-1.qcow2",
        "baseline.ext4",
    ]
    disks.settle(drive)  # idempotent
    assert disks.live_top(drive) == drive


def test_an_undone_split_leaves_nothing_and_a_reset_outranks_stale_tops(drive: Path) -> None:
    disks.unsplit(disks.split(drive))
    assert names(drive.parent) == ["baseline.ext4", "workspace.qcow2"]
    disks.split(drive)
    fresh = drive.with_name("workspace.qcow2.new")
    disks.create_overlay(drive.with_name("baseline.ext4"), fresh)
    disks.replace_top(fresh, drive)
    disks.settle(drive)
    assert disks.backing_name(drive) == "baseline.ext4"  # the reset's image, not the old top
    # Layer numbers stay new in the folder: a later fork does not reuse layer-1.
    assert disks.split(drive).layer.name == "workspace.layer-2.qcow2"


def test_old_absolute_backings_are_renamed_relative_at_rest_and_copies_pin_them(
    drive: Path, tmp_path: Path
) -> None:
    absolute = str(drive.with_name("baseline.ext4"))
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", absolute, str(drive)],
        check=True,
    )
    disks.settle(drive)
    assert disks.backing_name(drive) == "baseline.ext4"
    kept = tmp_path / "snapshots"
    kept.mkdir()
    copy = kept / "s.qcow2"
    copy.write_bytes(drive.read_bytes())
    disks.pin_backing(copy, drive.parent)
    assert disks.backing_name(copy) == absolute
    assert len(disks.backing_chain(copy)) == 2


def test_a_damaged_header_is_an_error_not_a_guess(drive: Path) -> None:
    drive.write_bytes(b"not an image")
    with pytest.raises(VMError, match="not a qcow2 image"):
        disks.backing_name(drive)
    disks.settle(drive)  # logged, not raised: QEMU says what is wrong at the start
    assert os.path.exists(drive)
