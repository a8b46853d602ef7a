import gzip
import subprocess
from pathlib import Path

import pytest

from pyro_mcp.environments import builder
from pyro_mcp.environments.builder import CpioWriter, _apt_source_uris


def test_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
    )
    assert _apt_source_uris(tmp_path)[0] == "http://mirror.invalid/debian"


def test_mirror_is_read_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.invalid/debian bookworm main\n"
    )
    assert _apt_source_uris(tmp_path) == ["http://mirror.invalid/debian"]


def test_the_mirror_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_DEBIAN_MIRROR", "http://override.invalid/debian")
    assert builder.debian_mirror() == "http://override.invalid/debian"


def test_cpio_archives_are_readable_by_cpio(tmp_path: Path) -> None:
    archive = CpioWriter()
    archive.directory("bin")
    archive.file("bin/hello", b"#!/bin/sh\necho hi\n", mode=0o755)
    archive.device("dev/console", 5, 1)
    listing = subprocess.run(
        ["cpio", "-t", "-v"], input=archive.finish(), capture_output=True, check=True
    ).stdout.decode()
    assert "bin/hello" in listing
    assert "dev/console" in listing
    assert listing.splitlines()[2].startswith("crw")


def test_the_initramfs_carries_init_agent_and_modules(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    for name in builder.GUEST_MODULES:
        (modules / f"{name}.ko").write_bytes(b"module " + name.encode())
    output = tmp_path / "initrd.img"
    builder.build_initramfs(modules, output)
    names = (
        subprocess.run(
            ["cpio", "-t"],
            input=gzip.decompress(output.read_bytes()),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    assert {
        "init",
        "bin/busybox",
        "pyro/agent.py",
        "pyro/protocol.py",
        "lib/modules/virtio_mmio.ko",
    } <= set(names)
    assert not output.with_name("initrd.img.partial").exists()


def test_the_guest_files_hash_changes_with_their_content() -> None:
    assert len(builder.guest_files_hash()) == 16
    assert builder.guest_files_hash() == builder.guest_files_hash()


def test_concurrent_builds_of_one_initramfs_both_succeed(tmp_path: Path) -> None:
    import threading

    modules = tmp_path / "modules"
    modules.mkdir()
    for name in builder.GUEST_MODULES:
        (modules / f"{name}.ko").write_bytes(b"module")
    output = tmp_path / "initrd.img"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            builder.build_initramfs(modules, output)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert gzip.decompress(output.read_bytes())
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
