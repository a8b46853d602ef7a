import io
import os
import tarfile
from pathlib import Path

import pytest

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces.paths import resolve_workspace_path
from pyro_mcp.workspaces.seed import stage_seed


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
