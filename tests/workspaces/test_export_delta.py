"""A directory export takes the unchanged part from the baseline on the host and
only the changes from the guest; the result is the full pack's, entry for entry."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from pyro_mcp import Pyro
from pyro_mcp.errors import AgentProtocolError
from pyro_mcp.workspaces import export, transfer

pytestmark = pytest.mark.vm

CHANGES = " && ".join(
    [
        "echo changed >> pkg/a.py",  # modified
        "echo new > pkg/new.py",  # added
        "rm pkg/gone.py",  # deleted
        "mkdir -p pkg/fresh/deep && echo x > pkg/fresh/deep/x.txt",  # a directory added whole
        "rm -r pkg/old",  # a directory deleted whole
        "rm pkg/becomes_dir && mkdir pkg/becomes_dir && echo in > pkg/becomes_dir/in.txt",
        "rm -r pkg/becomes_file && echo now-a-file > pkg/becomes_file",
        "chmod +x pkg/tool.sh",  # mode only
        "chmod 700 pkg/sub",  # a directory's mode (the data filter never applies it)
        "mv pkg/sub/moved_from.txt pkg/sub/moved_to.txt",
        "ln -sfn ../a.py pkg/sub/link_to_a",  # a link retargeted
        "mkdir -p build && echo obj > build/out.o && echo log > pkg/run.log",  # ignored
    ]
)


def make_project(root: Path) -> Path:
    files = {
        "pkg/a.py": "a = 1\n",
        "pkg/gone.py": "gone\n",
        "pkg/old/one.txt": "1\n",
        "pkg/old/two/three.txt": "3\n",
        "pkg/becomes_dir": "file\n",
        "pkg/becomes_file/inner.txt": "inner\n",
        "pkg/tool.sh": "#!/bin/sh\necho tool\n",
        "pkg/sub/moved_from.txt": "moving\n",
        "pkg/sub/keep.txt": "keep\n",
        "README.md": "# project\n",
        ".gitignore": "build/\n*.log\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "pkg" / "setuid").write_text("s\n")
    (root / "pkg" / "setuid").chmod(0o4775)
    (root / "pkg" / "sub" / "link_to_a").symlink_to("../gone.py")
    (root / "pkg" / "sub" / "link_kept").symlink_to("keep.txt")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)
    return root


def tree_of(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: type, permission bits, content or link target."""
    found: dict[str, Any] = {}
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(current, name)
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid)
            else:
                found[relative] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return found


def test_an_export_from_baseline_and_changes_equals_the_full_pack(
    pyro: Pyro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "project")
    ws = pyro.create_workspace(project_path=project)["workspace_id"]
    try:
        assert pyro.exec_workspace(ws, CHANGES)["exit_code"] == 0
        packed: list[dict[str, Any]] = []
        real_fetch = transfer.fetch_tree

        def spy(*args: Any, **kwargs: Any) -> Any:
            packed.append(kwargs)
            return real_fetch(*args, **kwargs)

        cases = [(".", False), ("pkg", False), (".", True)]
        delta = {}
        monkeypatch.setattr(transfer, "fetch_tree", spy)
        for number, (path, everything) in enumerate(cases):
            out = tmp_path / f"delta{number}"
            result = pyro.export_workspace(ws, path, out, include_ignored=everything)
            delta[number] = (result, tree_of(out))
        # The guest packed the changed entries only, never a whole directory.
        assert all(call.get("members") is not None for call in packed)
        assert sorted(packed[0]["trees"]) == ["pkg/becomes_dir", "pkg/fresh"]
        assert "pkg/a.py" in packed[0]["members"]
        assert "pkg/sub/keep.txt" not in packed[0]["members"]

        with pytest.raises(AgentProtocolError, match="leaves the output"):  # ../a.py
            pyro.export_workspace(ws, "pkg/sub", tmp_path / "sub")
        assert not (tmp_path / "sub").exists()

        monkeypatch.setattr(export, "export_directory", lambda *args: None)
        with pytest.raises(AgentProtocolError, match="leaves the output"):
            pyro.export_workspace(ws, "pkg/sub", tmp_path / "sub")
        for number, (path, everything) in enumerate(cases):
            out = tmp_path / f"full{number}"
            result = pyro.export_workspace(ws, path, out, include_ignored=everything)
            assert delta[number][0] | {"output": str(out)} == result, path
            assert delta[number][1] == tree_of(out), path

        whole = delta[0][1]
        assert whole["pkg/a.py"][2] == b"a = 1\nchanged\n"
        assert "pkg/gone.py" not in whole and "pkg/old" not in whole
        assert whole["pkg/becomes_dir/in.txt"][2] == b"in\n"
        assert whole["pkg/becomes_file"][2] == b"now-a-file\n"
        assert whole["pkg/tool.sh"][1] & 0o100
        assert whole["pkg/setuid"][1] == 0o755  # high bits and group write dropped
        assert whole["pkg/sub/link_to_a"] == ("link", "../a.py")
        assert "build" not in whole and "pkg/run.log" not in whole
        assert "build/out.o" in delta[2][1] and "pkg/run.log" in delta[2][1]
        assert delta[0][0]["ignored_count"] == 2
    finally:
        pyro.delete_workspace(ws)


def test_a_change_list_that_goes_through_a_symlink_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (tree / "escape").symlink_to(outside)
    with pytest.raises(AgentProtocolError, match="symlink"):
        export._remove(tree, PurePosixPath("escape/precious"))
    assert (outside / "precious").read_text() == "keep me"
    with pytest.raises(AgentProtocolError, match="change"):
        export._relative("pkg/../../etc", "pkg")
    export._remove(tree, PurePosixPath("escape"))  # the link itself, not what it points at
    assert not (tree / "escape").exists() and (outside / "precious").exists()


def test_a_baseline_link_leaving_the_export_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "abs").symlink_to("/etc/passwd")
    with pytest.raises(AgentProtocolError, match="leaves the output"):
        export._settle(tree)
