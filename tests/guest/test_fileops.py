"""The guest's file operations run on the host against tmp roots."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from pyro_mcp.guest import diff, fileops
from pyro_mcp.guest.fileops import RequestError


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    workspace, baseline = tmp_path / "workspace", tmp_path / "baseline"
    for root in (workspace, baseline):
        (root / "src").mkdir(parents=True)
        (root / "src" / "app.py").write_text("a\nb\n")
        (root / "keep.txt").write_text("same\n")
        (root / "lost+found").mkdir()
    monkeypatch.setattr(fileops, "WORKSPACE", str(workspace))
    monkeypatch.setattr(fileops, "BASELINE", str(baseline))
    monkeypatch.setattr(fileops, "STAGING", str(tmp_path / "staging"))
    return workspace, baseline


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_paths_resolving_outside_the_workspace_are_refused(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    (workspace / "etc").symlink_to("/etc")
    for path in ("../x", "/etc/passwd", "etc/passwd", "src/../../x"):
        with pytest.raises(RequestError) as caught:
            fileops.op_file_read({"path": path})
        assert caught.value.kind == "outside_workspace"
    with pytest.raises(RequestError):
        fileops.op_file_write({"path": "etc/evil", "content": b64(b"x")})


def test_reading_a_directory_and_writing_over_one_are_refused(roots: tuple[Path, Path]) -> None:
    with pytest.raises(RequestError) as caught:
        fileops.op_file_read({"path": "src"})
    assert caught.value.kind == "is_a_directory"
    with pytest.raises(RequestError) as caught:
        fileops.op_file_write({"path": "src", "content": b64(b"x")})
    assert caught.value.kind == "is_a_directory"


def test_writes_create_parents_and_keep_the_mode(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    os.chmod(workspace / "src" / "app.py", 0o755)
    fileops.op_file_write({"path": "src/app.py", "content": b64(b"new\n")})
    assert os.stat(workspace / "src" / "app.py").st_mode & 0o777 == 0o755
    fileops.op_file_write({"path": "deep/er/file.txt", "content": b64(b"x")})
    assert (workspace / "deep" / "er" / "file.txt").read_bytes() == b"x"


def test_a_batch_with_one_bad_path_changes_nothing(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    with pytest.raises(RequestError):
        fileops.op_files_apply(
            {
                "writes": [{"path": "src/app.py", "content": b64(b"changed\n")}],
                "deletes": ["missing.txt"],
            }
        )
    assert (workspace / "src" / "app.py").read_text() == "a\nb\n"


def test_binary_files_are_reported_as_binary(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    (workspace / "blob").write_bytes(b"\x00\x01\x02")
    assert fileops.op_file_read({"path": "blob"})["binary"] is True
    assert fileops.op_file_read({"path": "keep.txt"})["binary"] is False


def test_diff_reports_every_kind_of_change(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    assert diff.op_diff({}) == {"changes": [], "patch": "", "patch_truncated": False}
    (workspace / "src" / "app.py").write_text("a\nB")
    (workspace / "keep.txt").unlink()
    (workspace / "new.txt").write_text("n\n")
    os.chmod(workspace / "src", 0o700)
    changes = {c["path"]: c for c in diff.op_diff({})["changes"]}
    assert changes["src/app.py"]["status"] == "modified"
    assert changes["keep.txt"]["status"] == "deleted"
    assert changes["new.txt"]["status"] == "added"
    assert changes["src"]["status"] == "mode_changed"
    patch = diff.op_diff({})["patch"]
    assert "-b\n+B\n\\ No newline at end of file\n" in patch
    assert "lost+found" not in patch


def test_pack_and_unpack_round_trip_through_staging(roots: tuple[Path, Path]) -> None:
    packed = fileops.op_pack({"path": "src"})
    assert packed["kind"] == "directory"
    data = base64.b64decode(fileops.op_chunk_read({"staging": packed["staging"]})["data"])
    assert len(data) == packed["size"]
    staged = fileops.op_staging_create({})["staging"]
    fileops.op_chunk_write({"staging": staged, "data": b64(data)})
    assert fileops.op_unpack({"staging": staged, "dest": "copy"})["files"] == 1
    workspace, _ = roots
    assert (workspace / "copy" / "app.py").read_text() == "a\nb\n"
    with pytest.raises(RequestError):
        fileops.op_chunk_read({"staging": "/etc/passwd"})
