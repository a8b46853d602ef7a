import io
import os
import tarfile
from pathlib import Path

import pytest

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces import seed as seed_module
from pyro_mcp.workspaces.paths import resolve_workspace_path
from pyro_mcp.workspaces.seed import stage_seed, staging_area


def make_tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return path


def test_a_directory_seed_keeps_inner_links_and_skips_escaping_ones(tmp_path: Path) -> None:
    seed = tmp_path / "repo"
    (seed / "src").mkdir(parents=True)
    (seed / "src" / "app.py").write_text("print(1)\n")
    os.symlink("src/app.py", seed / "inner")
    os.symlink("/etc/passwd", seed / "outer")
    os.symlink("../../", seed / "src" / "up")
    info = stage_seed(seed, tmp_path / "staged")
    staged = tmp_path / "staged"
    assert (staged / "src" / "app.py").read_text() == "print(1)\n"
    assert os.readlink(staged / "inner") == "src/app.py"
    assert not (staged / "outer").exists() and not (staged / "src" / "up").is_symlink()
    assert (info.kind, info.skipped_links, info.bytes) == ("directory", 2, 9)


def test_a_directory_a_copy_would_equal_is_used_as_it_is(tmp_path: Path) -> None:
    seed = tmp_path / "repo"
    (seed / "src").mkdir(parents=True)
    (seed / "src" / "app.py").write_text("print(1)\n")
    os.symlink("src/app.py", seed / "inner")
    info = stage_seed(seed, tmp_path / "staged", as_is=True)
    assert info.tree == seed and not any((tmp_path / "staged").iterdir())
    assert (info.kind, info.file_count, info.bytes) == ("directory", 2, 9)
    assert "tree" not in info.to_dict()
    # Anything a copy would change (here a link out of the seed) means a copy.
    os.symlink("/etc/passwd", seed / "outer")
    copied = stage_seed(seed, tmp_path / "staged", as_is=True)
    assert copied.tree == tmp_path / "staged" and copied.skipped_links == 1
    assert (tmp_path / "staged" / "src" / "app.py").read_text() == "print(1)\n"


def test_a_copy_keeps_mode_and_time_and_refuses_what_is_no_longer_a_file(
    tmp_path: Path,
) -> None:
    source = tmp_path / "run.sh"
    source.write_text("#!/bin/sh\n")
    os.chmod(source, 0o751)
    os.utime(source, ns=(1_000_000_000, 2_000_000_000))
    seed_module.copy_file(source, tmp_path / "copy")
    copied = (tmp_path / "copy").stat()
    assert (copied.st_mode & 0o7777, copied.st_mtime_ns) == (0o751, 2_000_000_000)
    os.mkfifo(tmp_path / "fifo")  # swapped in since the walk: refused, and never blocks
    with pytest.raises(InvalidArgument, match="changed while it was being copied"):
        seed_module.copy_file(tmp_path / "fifo", tmp_path / "copy2")
    os.symlink(source, tmp_path / "link")
    with pytest.raises(OSError):
        seed_module.copy_file(tmp_path / "link", tmp_path / "copy3")


def test_staging_happens_in_memory_when_there_is_room_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with staging_area(tmp_path / "ws" / "seed") as staging:
        staging.mkdir()
        (staging / "f").write_text("x")
        where = staging.parent
    assert where.parent == seed_module.MEMORY_STAGING and not where.exists()
    monkeypatch.setattr(seed_module, "MEMORY_STAGING", tmp_path / "no-such-memory")
    with pytest.raises(RuntimeError), staging_area(tmp_path / "ws" / "seed") as staging:
        where = staging.parent
        raise RuntimeError("a failed build")
    assert where.parent == tmp_path / "ws" and not where.exists()


def test_an_archive_seed_is_extracted(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "seed.tgz", [tarfile.TarInfo("a/b.txt")])
    info = stage_seed(archive, tmp_path / "staged")
    assert (tmp_path / "staged" / "a" / "b.txt").read_bytes() == b"x"
    assert (info.kind, info.file_count) == ("archive", 1)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escape.txt"),
        tarfile.TarInfo("/abs.txt"),
        tarfile.TarInfo("a/../../escape.txt"),
    ],
)
def test_archive_members_outside_the_root_are_refused(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", [member])
    with pytest.raises(InvalidArgument, match="outside the workspace"):
        stage_seed(archive, tmp_path / "staged")
    assert not (tmp_path / "escape.txt").exists()


def test_archive_links_and_devices_that_escape_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    with pytest.raises(InvalidArgument, match="escapes"):
        stage_seed(make_tar(tmp_path / "l.tar", [link]), tmp_path / "s1")
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(InvalidArgument, match="device"):
        stage_seed(make_tar(tmp_path / "d.tar", [device]), tmp_path / "s2")


def test_missing_and_unsupported_seeds_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        stage_seed(tmp_path / "nope", tmp_path / "s")
    (tmp_path / "seed.zip").write_bytes(b"PK")
    with pytest.raises(InvalidArgument, match=r"\.tar"):
        stage_seed(tmp_path / "seed.zip", tmp_path / "s")
    (tmp_path / "broken.tgz").write_bytes(b"not a tar")
    with pytest.raises(InvalidArgument, match="not a readable tar"):
        stage_seed(tmp_path / "broken.tgz", tmp_path / "s")


def test_workspace_paths_stay_under_workspace() -> None:
    assert str(resolve_workspace_path("src")) == "/workspace/src"
    assert str(resolve_workspace_path("/workspace/a/../b")) == "/workspace/b"
    assert str(resolve_workspace_path(".")) == "/workspace"
    for bad in ("../etc", "/etc", "/workspace/../etc", "a/../../x", "/workspacex"):
        with pytest.raises(InvalidArgument, match="outside /workspace"):
            resolve_workspace_path(bad)
