"""Cache states, using hand-made builds (building for real is covered in tests/test_run.py)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from pyro_mcp.environments.builder import sha256_file
from pyro_mcp.environments.cache import MANIFEST_FORMAT, EnvironmentCache, _check_files


def make_build(cache: EnvironmentCache, name: str = "debian-12", build_id: str = "b1") -> Path:
    build = cache.environments_dir / name / "builds" / build_id
    build.mkdir(parents=True)
    (build / "vmlinuz").write_bytes(b"kernel")
    (build / "rootfs.ext4").write_bytes(b"root" * 10)
    manifest = {
        "format": MANIFEST_FORMAT,
        "files": {
            n: {"size": (build / n).stat().st_size, "sha256": sha256_file(build / n)}
            for n in ("vmlinuz", "rootfs.ext4")
        },
        "kernel": {"version": "1"},
        "built_at": "now",
    }
    (build / "manifest.json").write_text(json.dumps(manifest))
    link = cache.environments_dir / name / "current"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("builds") / build_id)
    return build


def test_a_fresh_cache_has_nothing_installed(tmp_path: Path) -> None:
    statuses = EnvironmentCache(tmp_path).list()
    assert [s.installed for s in statuses] == [False, False, False]
    assert all(s.problem is None for s in statuses)


def test_a_whole_build_is_installed(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path)
    make_build(cache)
    assert cache.status("debian:12").installed


def test_a_build_without_its_manifest_is_reported_as_interrupted(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path)
    (make_build(cache) / "manifest.json").unlink()
    status = cache.status("debian:12")
    assert not status.installed
    assert status.problem is not None and "interrupted" in status.problem


def test_a_truncated_image_is_detected_cheaply(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path)
    (make_build(cache) / "rootfs.ext4").write_bytes(b"root")
    assert cache.status("debian:12").problem == "rootfs.ext4 has the wrong size"


def test_a_corrupted_image_of_the_right_size_is_caught_by_hashing(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path)
    build = make_build(cache)
    (build / "rootfs.ext4").write_bytes(b"XXXX" * 10)
    manifest = json.loads((build / "manifest.json").read_text())
    assert _check_files(build, manifest, verify_hashes=False) is None
    assert "corrupted" in str(_check_files(build, manifest, verify_hashes=True))


def test_prune_removes_superseded_and_partial_builds_but_keeps_current_and_in_use(
    tmp_path: Path,
) -> None:
    cache = EnvironmentCache(tmp_path)
    old_in_use = make_build(cache, build_id="a-old-in-use")
    old_unused = make_build(cache, build_id="b-old")
    current = make_build(cache, build_id="c-current")
    partial = current.parent / ".partial-x"
    partial.mkdir()
    result = cache.prune(keep_builds={old_in_use})
    assert old_in_use.exists() and current.exists()
    assert not old_unused.exists() and not partial.exists()
    assert str(old_unused) in result["removed"]


def test_prune_all_also_removes_the_installed_build(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path)
    current = make_build(cache)
    cache.prune(remove_installed=True)
    assert not current.exists()
    assert not cache.status("debian:12").installed


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (as builds do)")
def test_a_killed_debootstrap_s_mounts_are_undone_before_its_build_is_removed(
    tmp_path: Path,
) -> None:
    cache = EnvironmentCache(tmp_path)
    current = make_build(cache, build_id="c-current")
    proc = current.parent / ".partial-x" / "root fs" / "proc"  # a space: escaped in mounts
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        (current.parent / ".partial-y").mkdir()
        result = cache.prune()
        assert not (current.parent / ".partial-x").exists()
        assert str(proc) not in Path("/proc/self/mounts").read_text().replace("\\040", " ")
        assert str(current.parent / ".partial-x") in result["removed"]
        assert not (current.parent / ".partial-y").exists()
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False, capture_output=True)


def test_prune_drops_initramfs_files_of_other_versions_only(tmp_path: Path) -> None:
    from pyro_mcp.environments import builder

    cache = EnvironmentCache(tmp_path)
    build = make_build(cache)
    current = build / f"initrd-{builder.guest_files_hash()}.img"
    current.write_bytes(b"current")
    (build / "initrd-0000000000000000.img").write_bytes(b"another version")
    cache.prune()
    assert current.exists()
    assert not (build / "initrd-0000000000000000.img").exists()


def test_prune_leaves_an_environment_that_is_being_built(tmp_path: Path) -> None:
    import fcntl

    cache = EnvironmentCache(tmp_path)
    current = make_build(cache)
    partial = current.parent / ".partial-in-progress"
    partial.mkdir()
    with (current.parent.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a build in another process
        cache.prune()
        assert partial.exists()
    cache.prune()
    assert not partial.exists()


@pytest.mark.parametrize("name", ["x" * 5000, "debian:12\x00", "debian:12\n", "../etc", "A:1"])
def test_an_environment_name_not_of_the_form_is_refused_before_the_filesystem(
    tmp_path: Path, name: str
) -> None:
    from pyro_mcp import InvalidArgument

    cache = EnvironmentCache(tmp_path)
    with pytest.raises(InvalidArgument, match="is not an environment name"):
        cache.status(name)
    with pytest.raises(InvalidArgument, match="is not an environment name"):
        cache.remove(name)


def test_removing_an_environment_that_is_not_installed_names_what_is(tmp_path: Path) -> None:
    from pyro_mcp import NotFound

    cache = EnvironmentCache(tmp_path)
    make_build(cache)
    with pytest.raises(NotFound, match="'debian:12-base' is not installed; installed: debian:12"):
        cache.remove("debian:12-base")
    with pytest.raises(NotFound, match="unknown environment 'tool:1'"):
        cache.remove("tool:1")
    removed = cache.remove("debian:12")
    assert removed["freed_bytes"] > 0 and not (cache.environments_dir / "debian-12").exists()
    assert cache.installed_names() == ()
