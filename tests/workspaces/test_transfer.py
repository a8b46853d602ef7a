"""Export archives from an untrusted guest, checked before anything is written."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pyro_mcp.errors import AgentProtocolError, InvalidArgument
from pyro_mcp.workspaces.transfer import extract_export


def archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def file_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"content\n"


def link_member(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def test_a_file_export_lands_at_the_output(tmp_path: Path) -> None:
    tar = archive(tmp_path / "x.tar", [file_member("app.py")])
    result = extract_export(tar, "file", tmp_path / "out.py", overwrite=False)
    assert (tmp_path / "out.py").read_text() == "content\n"
    assert result["files"] == 1


def test_a_directory_export_keeps_inner_links(tmp_path: Path) -> None:
    tar = archive(tmp_path / "x.tar", [file_member("src/a.py"), link_member("src/b.py", "a.py")])
    extract_export(tar, "directory", tmp_path / "out", overwrite=False)
    assert os.readlink(tmp_path / "out" / "src" / "b.py") == "a.py"
    assert oct((tmp_path / "out").stat().st_mode & 0o777) != oct(0o700)


@pytest.mark.parametrize(
    "member",
    [
        file_member("../escape"),
        file_member("/etc/cron.d/evil"),
        file_member("a/../../escape"),
        link_member("link", "/etc/passwd"),
        link_member("link", "../../../etc/passwd"),
        link_member("hard", "../outside", tarfile.LNKTYPE),
    ],
)
def test_members_reaching_outside_the_output_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]
) -> None:
    tar = archive(tmp_path / "x.tar", [file_member("ok.txt"), member])
    with pytest.raises(AgentProtocolError):
        extract_export(tar, "directory", tmp_path / "out", overwrite=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_devices_and_fifos_are_refused(tmp_path: Path) -> None:
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(AgentProtocolError, match="device"):
        extract_export(
            archive(tmp_path / "d.tar", [(device, b"")]), "directory", tmp_path / "o", False
        )


def test_a_file_export_must_be_exactly_one_file(tmp_path: Path) -> None:
    tar = archive(tmp_path / "x.tar", [file_member("a"), file_member("b")])
    with pytest.raises(AgentProtocolError, match="exactly one"):
        extract_export(tar, "file", tmp_path / "out", overwrite=False)


def test_existing_outputs_and_symlinks_are_protected(tmp_path: Path) -> None:
    tar = archive(tmp_path / "x.tar", [file_member("app.py")])
    (tmp_path / "exists").write_text("keep")
    with pytest.raises(InvalidArgument, match="--overwrite"):
        extract_export(tar, "file", tmp_path / "exists", overwrite=False)
    assert (tmp_path / "exists").read_text() == "keep"
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(InvalidArgument, match="symlink"):
        extract_export(tar, "file", tmp_path / "link", overwrite=True)
    assert (tmp_path / "victim").read_text() == "keep"
    extract_export(tar, "file", tmp_path / "exists", overwrite=True)
    assert (tmp_path / "exists").read_text() == "content\n"


def test_an_unreadable_archive_is_a_protocol_error(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(AgentProtocolError, match="unreadable"):
        extract_export(tmp_path / "x.tar", "directory", tmp_path / "out", overwrite=False)
