"""The warm snapshot store's keys, checks and layout, on files made here (no guests)."""

from __future__ import annotations

import json
from pathlib import Path

from pyro_mcp.vm import warm


def key(**overrides: object) -> warm.WarmKey:
    values: dict[str, object] = dict(
        environment="debian:12",
        build_id="b1",
        guest_files="initrd-abc.img",
        qemu="7.2.22 /usr/bin/qemu-system-x86_64 1:2",
        accel="tcg",
        vcpu_count=1,
        mem_mib=1024,
        network=False,
        pyro_version="0.1.0",
    )
    values.update(overrides)
    return warm.WarmKey(**values)  # type: ignore[arg-type]


def fake_snapshot(store: warm.WarmStore, k: warm.WarmKey) -> warm.WarmSnapshot:
    with store.lock(k):
        partial = store.new_partial(k)
        for name in (warm.RAM, warm.DEVICES, warm.ROOT, warm.WORKSPACE, warm.BASELINE):
            (partial / name).write_bytes(name.encode() * 100)
        return store.commit(k, partial, {"proof": {"create_ms": 1}})


def test_each_changed_key_field_is_named_for_doctor() -> None:
    recorded = key().to_dict()
    assert key().differences(recorded) == []
    assert key(build_id="b2").differences(recorded) == ["the environment was rebuilt"]
    assert key(accel="kvm").differences(recorded) == ["the accelerator changed"]
    assert key(pyro_version="0.2.0").differences(recorded) == ["pyro was upgraded"]
    assert "QEMU" in key(qemu="8.0").differences(recorded)[0]
    assert "init or agent" in key(guest_files="initrd-new.img").differences(recorded)[0]


def test_shapes_keep_snapshots_with_and_without_a_nic_apart(tmp_path: Path) -> None:
    store = warm.WarmStore(tmp_path / "warm")
    assert store.shape_dir(key()).name == "1cpu-1024m"
    assert store.shape_dir(key(network=True)).name == "1cpu-1024m-net"
    fake_snapshot(store, key())
    assert store.status(key()).status == "warm"
    assert store.status(key(network=True)).status == "cold"


def test_a_committed_snapshot_is_current_and_checked_before_use(tmp_path: Path) -> None:
    store = warm.WarmStore(tmp_path / "warm")
    assert store.status(key()).status == "cold"
    snapshot = fake_snapshot(store, key())
    status = store.status(key())
    assert status.status == "warm" and status.snapshot == snapshot
    assert not any(p.name.startswith(".partial") for p in snapshot.directory.parent.iterdir())

    (snapshot.directory / warm.ROOT).write_bytes(b"x" * len(warm.ROOT.encode() * 100))
    damaged = store.status(key())
    assert damaged.status == "stale" and "root.qcow2 is corrupted" in damaged.reason
    assert store.status(key(), verify=False).status == "warm"  # same size: only a hash tells

    (snapshot.directory / warm.RAM).write_bytes(b"short")
    assert "wrong size" in store.status(key(), verify=False).reason
    (snapshot.directory / warm.DEVICES).unlink()
    assert "devices.snap is missing" in store.status(key(), verify=False).reason


def test_a_manifest_from_elsewhere_or_a_stale_key_is_never_used(tmp_path: Path) -> None:
    store = warm.WarmStore(tmp_path / "warm")
    snapshot = fake_snapshot(store, key())
    stale = store.status(key(build_id="b2"))
    assert stale.status == "stale" and stale.snapshot is None
    assert "environment was rebuilt" in stale.reason and stale.prepared_at
    manifest = json.loads((snapshot.directory / "manifest.json").read_text())
    manifest["format"] = 99
    (snapshot.directory / "manifest.json").write_text(json.dumps(manifest))
    assert "another pyro version" in store.status(key()).reason


def test_an_interrupted_prepare_leaves_a_partial_that_is_never_current(tmp_path: Path) -> None:
    store = warm.WarmStore(tmp_path / "warm")
    good = fake_snapshot(store, key())
    with store.lock(key()):
        partial = store.new_partial(key())
        (partial / warm.RAM).write_bytes(b"half")
    assert store.status(key()).snapshot == good
    with store.lock(key()):
        store.new_partial(key())  # the next prepare clears the old partial
    assert not partial.exists()


def test_prune_keeps_only_the_usable_snapshots(tmp_path: Path) -> None:
    store = warm.WarmStore(tmp_path / "warm")
    old = fake_snapshot(store, key())
    new = fake_snapshot(store, key())
    other = fake_snapshot(store, key(network=True))
    result = store.prune({new.directory})
    assert set(result["removed"]) == {str(old.directory), str(other.directory)}
    assert result["freed_bytes"] > 0
    assert store.status(key()).snapshot == new
    assert store.status(key(network=True)).status == "cold"
